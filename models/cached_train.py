"""The CPU recipe for pretrained towers: train the top of each tower over cached bottom outputs.

A pretrained trunk does not need to run forward on every step. The frozen bottom of each tower
(``models.tower_split``) runs once per training image and *view* (view 0: the evaluation crop;
views 1..K: random resized crops, flips and colour jitter, seeded by (seed, view, image)) and once
per caption; its outputs are cached on disk as float16 arrays keyed by everything that shapes
them, so later runs with the same model and data reuse them. Training then runs only the
top: the projection heads (``--unlock-image-stages 0 --unlock-text-layers 0``: a probe that trains
in seconds) or also the last image stages and text layers, at ``trunk_lr_scale`` times the head
learning rate. BatchNorm statistics stay frozen, as the cache assumes.

Each epoch draws, for every training image, one view and one of its captions. With
``keyword_texts`` each batch also gets that many one-word texts, nouns drawn from its images'
captions ("dog"), each of which must pick out the batch's images whose captions use the noun
(``models.loss.keyword_clip_loss``): the short queries people type, which full-sentence
captions alone do not teach. Validation
embeds the cached evaluation crops of the val images and their captions through the same top, so
the selected epoch is chosen on exactly what the exported model computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from models import weights
from models.data import read_pairs
from models.encoder import LoadedModel, load_model, resolve_device
from models.errors import CheckpointError, ClipsearchError
from models.evaluate import retrieval_metrics
from models.images import open_rgb
from models.keywords import frequent_nouns, ranking_metrics, uses
from models.loss import ClipLoss, clamp_logit_scale, keyword_clip_loss
from models.tower_split import ImageSplit, TextSplit
from models.train import (
    TrainConfig,
    atomic_torch_save,
    autocast_dtype,
    group_by_image,
    lr_at,
    param_groups,
    read_checkpoint,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
TEXT_BATCH = 256
KEYWORD_VOCABULARY = 1000  # the most frequent nouns of the training captions
VAL_KEYWORDS = 50  # as `clipsearch eval keywords`


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` atomically: a crash leaves no half-written cache behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


class ViewImages(Dataset):
    """Image ``i`` in view ``view``: 0 is the evaluation crop, others are seeded augmentations."""

    def __init__(
        self, paths: list[Path], view: int, loaded: LoadedModel, seed: int, scale: tuple
    ) -> None:
        self.paths, self.view, self.seed = paths, view, seed
        self.eval_transform = loaded.preprocess
        size = loaded.image_size
        normalize = next(t for t in loaded.preprocess.transforms if isinstance(t, T.Normalize))
        self.augment = T.Compose(
            [
                T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.2, 0.2, 0.2),
                T.ToTensor(),
                normalize,
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            image: Image.Image = open_rgb(self.paths[i])
        except OSError as e:
            raise ClipsearchError(f"cannot read training image {self.paths[i]}: {e}") from e
        if self.view == 0:
            return self.eval_transform(image)
        torch.manual_seed(hash((self.seed, self.view, i)) & 0x7FFFFFFF)
        return self.augment(image)


class FeatureCache:
    """Bottom outputs on disk under ``directory``, one file per (tower, cut, data, view)."""

    def __init__(
        self, directory: Path, loaded: LoadedModel, device: torch.device, workers: int
    ) -> None:
        self.dir, self.loaded, self.device, self.workers = directory, loaded, device, workers
        self.dir.mkdir(parents=True, exist_ok=True)
        self._digests: dict[tuple[str, ...], str] = {}

    def digest(self, prefixes: tuple[str, ...]) -> str:
        """Identity of the weights a bottom computes with, so caches follow weights, not names.

        Hashed once per bottom: every view of the train and val images shares it (the bottoms are
        frozen for the whole run)."""
        if prefixes in self._digests:
            return self._digests[prefixes]
        h = hashlib.sha256(f"{CACHE_FORMAT}".encode())
        for name, value in self.loaded.model.state_dict().items():
            if name.startswith(prefixes):
                h.update(name.encode())
                h.update(value.detach().float().cpu().numpy().tobytes())
        self._digests[prefixes] = h.hexdigest()[:20]
        return self._digests[prefixes]

    @torch.inference_mode()
    def images(
        self, split: ImageSplit, paths: list[Path], view: int, seed: int, scale: tuple
    ) -> np.ndarray:
        """Bottom outputs of every image in ``view`` (memory-mapped float16)."""
        key = _key(self.digest(split.cached_prefixes()), self.loaded.image_size,
                   [str(p) for p in paths], view, seed if view else None,
                   scale if view else None)  # fmt: skip
        path = self.dir / f"image-{key}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
        loader = DataLoader(
            ViewImages(paths, view, self.loaded, seed, scale),
            batch_size=32,
            num_workers=self.workers,
        )
        out: np.ndarray | None = None
        done = 0
        desc = f"caching image view {view} ({len(paths)} images)"
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None):
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            feats = split.bottom(batch).float().cpu().numpy().astype(np.float16)
            if out is None:
                out = np.empty((len(paths), *feats.shape[1:]), np.float16)
            out[done : done + len(feats)] = feats
            done += len(feats)
        assert out is not None
        _save_npy(path, out)
        return np.load(path, mmap_mode="r")

    @torch.inference_mode()
    def texts(self, split: TextSplit, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Bottom outputs of every caption: rows of tokens (ragged, with offsets) or pooled."""
        key = _key(self.digest(split.cached_prefixes()), split.layers == 0, captions)
        path, offsets_path = self.dir / f"text-{key}.npy", self.dir / f"text-{key}.offsets.npy"
        if path.is_file() and offsets_path.is_file():
            return np.load(path, mmap_mode="r"), np.load(offsets_path)
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        pieces: list[np.ndarray | None] = [None] * len(captions)
        for start in tqdm(
            range(0, len(order), TEXT_BATCH), desc="caching captions", unit="batch", disable=None
        ):
            idx = order[start : start + TEXT_BATCH]
            tokens = self.loaded.trim_padding(self.loaded.tokenizer([captions[i] for i in idx]))
            hidden, mask = split.bottom(tokens.to(self.device))
            hidden = hidden.float().cpu().numpy().astype(np.float16)
            lengths = mask.sum(1).tolist()
            for row, i in enumerate(idx):
                pieces[i] = hidden[row] if split.layers == 0 else hidden[row, : lengths[row]]
        if split.layers == 0:
            flat, offsets = np.stack(pieces), np.arange(len(captions) + 1)
        else:
            sizes = [len(p) for p in pieces]
            flat, offsets = np.concatenate(pieces), np.concatenate([[0], np.cumsum(sizes)])
        _save_npy(offsets_path, offsets.astype(np.int64))
        _save_npy(path, flat)
        return np.load(path, mmap_mode="r"), offsets


def _caption_images(captions_of: list[list[int]], n_captions: int) -> np.ndarray:
    """For each caption index, the image it describes (``group_by_image``'s grouping inverted)."""
    image_of = np.empty(n_captions, np.int64)
    for image, caps in enumerate(captions_of):
        image_of[caps] = image
    return image_of


def _keyword_matrix(
    captions_of: list[list[int]], captions: list[str], nouns: list[str]
) -> np.ndarray:
    """Boolean (images, nouns): image i has a caption that uses noun j."""
    image_of = _caption_images(captions_of, len(captions))
    return uses(captions, image_of, nouns, len(captions_of)).T


def text_batch(
    flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pooled: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached caption rows as a padded (B, L, D) float batch with its mask (or (B, D) pooled)."""
    if pooled:
        return torch.from_numpy(np.asarray(flat[rows], np.float32)), torch.ones(len(rows), 1)
    lengths = offsets[rows + 1] - offsets[rows]
    out = np.zeros((len(rows), int(lengths.max()), flat.shape[1]), np.float32)
    mask = np.zeros(out.shape[:2], np.int64)
    for j, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        out[j, :n] = flat[offsets[row] : offsets[row] + n]
        mask[j, :n] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


class CachedTrainer:
    """One cached-trunk run under ``cfg.out``: caches, heads and unlocked tops, val selection."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.loss != "clip":
            raise ClipsearchError("cached-trunk training supports --loss clip only")
        if not cfg.val_data:
            raise ClipsearchError("cached-trunk training selects on validation: pass --val-data")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        pairs = read_pairs(cfg.data, cfg.image_root, cfg.image_col, cfg.text_col, split=cfg.split)
        val = read_pairs(
            cfg.val_data, cfg.image_root, cfg.image_col, cfg.text_col, split=cfg.val_split
        )
        self.images, self.captions_of, self.captions = group_by_image(pairs)
        self.val_images, val_caps_of, self.val_captions = group_by_image(val)
        self.val_t2i = _caption_images(val_caps_of, len(self.val_captions))
        if len(self.images) < cfg.batch_size:
            raise ClipsearchError(f"{len(self.images)} images are fewer than one batch")
        # Keyword texts: the nouns, and which images' captions use each (images x nouns).
        self.keywords: list[str] = []
        self.keyword_of = np.zeros((len(self.images), 0), bool)
        if cfg.keyword_texts:
            self.keywords = frequent_nouns(self.captions, KEYWORD_VOCABULARY)
            self.keyword_of = _keyword_matrix(self.captions_of, self.captions, self.keywords)
            self.val_keywords = frequent_nouns(self.val_captions, VAL_KEYWORDS)
            self.val_keyword_of = _keyword_matrix(val_caps_of, self.val_captions, self.val_keywords)
            log.info(
                "keyword texts: %d nouns, %d per batch; val: %s",
                len(self.keywords), cfg.keyword_texts, ", ".join(self.val_keywords[:10]),
            )  # fmt: skip

        self.loaded = load_model(cfg.model, cfg.pretrained, device=self.device)
        model = self.loaded.model
        self.image_split = ImageSplit(model.visual, cfg.unlock_image_stages)
        self.text_split = TextSplit(model.text, cfg.unlock_text_layers)
        model.eval()  # frozen BatchNorm statistics and dropout-free caches
        for p in model.parameters():
            p.requires_grad_(False)
        self.heads = [model.visual.head, model.text.proj]
        self.tops = self.image_split.trainable() + self.text_split.trainable()
        for m in self.tops:
            for p in m.parameters():
                p.requires_grad_(True)
        model.logit_scale.requires_grad_(True)
        model.visual.to(memory_format=torch.channels_last)

        head_ids = {id(p) for m in self.heads for p in m.parameters()}
        head_ids.add(id(model.logit_scale))
        groups = []
        for group in param_groups(model, cfg.weight_decay):
            heads = [p for p in group["params"] if id(p) in head_ids]
            trunk = [p for p in group["params"] if id(p) not in head_ids]
            wd = group["weight_decay"]
            groups += [{"params": heads, "weight_decay": wd, "scale": 1.0}]
            groups += [{"params": trunk, "weight_decay": wd, "scale": cfg.trunk_lr_scale}]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.loss_fn = ClipLoss()
        self.steps_per_epoch = len(self.images) // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch, self.step, self.best = 0, 0, -1.0

        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        self.cache = FeatureCache(cache_dir, self.loaded, self.device, cfg.workers)

    # --- caches ---------------------------------------------------------------------------
    def build_caches(self) -> None:
        """Run every frozen bottom once (or reuse the files of an earlier run)."""
        scale = tuple(self.cfg.aug_scale or (0.5, 1.0))
        self.train_views = [
            self.cache.images(self.image_split, self.images, v, self.cfg.seed, scale)
            for v in range(1 + self.cfg.image_views)
        ]
        self.val_view = self.cache.images(self.image_split, self.val_images, 0, 0, scale)
        self.train_text = self.cache.texts(self.text_split, self.captions)
        self.val_text = self.cache.texts(self.text_split, self.val_captions)
        if self.keywords:  # keyword k is text row len(captions) + k
            flat, offsets = self.train_text
            kflat, koffsets = self.cache.texts(self.text_split, self.keywords)
            self.train_text = (
                np.concatenate([flat, kflat]),
                np.concatenate([offsets, offsets[-1] + koffsets[1:]]),
            )
            self.val_keyword_text = self.cache.texts(self.text_split, self.val_keywords)

    # --- training -------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=bool(self.amp_dtype),
        )

    def _image_batch(self, array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.asarray(array[np.sort(rows)], np.float32))
        batch = batch[torch.from_numpy(np.argsort(np.argsort(rows)))]
        if batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch.to(self.device)

    def _train_mode(self, on: bool) -> None:
        for m in self.tops:
            m.train(on)
        if self.image_split.stages:  # BatchNorm statistics stay those the cache was made with
            for m in self.loaded.model.visual.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_epoch(self) -> float:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch])
        order = rng.permutation(len(self.images))
        views = rng.integers(0, len(self.train_views), len(self.images))
        caption = np.array([rng.choice(c) for c in self.captions_of])
        self._train_mode(True)
        model, losses, t0 = self.loaded.model, [], time.perf_counter()
        pooled = self.text_split.layers == 0
        for b in range(self.steps_per_epoch):
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            lr = lr_at(self.step, self.total_steps, cfg.lr, cfg.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["scale"]
            parts = []
            for v in range(len(self.train_views)):
                chosen = rows[views[rows] == v]
                if len(chosen):
                    parts.append((chosen, self._image_batch(self.train_views[v], chosen)))
            rows = np.concatenate([c for c, _ in parts])
            text_rows, positives = self._texts_for(rows, caption[rows])
            hidden, mask = text_batch(*self.train_text, text_rows, pooled)
            with self._autocast():
                image_f = torch.cat([self.image_split.top(x) for _, x in parts])
                text_f = self.text_split.top(hidden.to(self.device), mask.to(self.device))
                image_f = F.normalize(image_f.float(), dim=-1)
                text_f = F.normalize(text_f.float(), dim=-1)
                if positives is None:
                    loss = self.loss_fn(image_f, text_f, model.logit_scale)
                else:
                    n = len(rows)
                    loss = keyword_clip_loss(
                        image_f,
                        text_f[:n],
                        text_f[n:],
                        model.logit_scale,
                        positives.to(self.device),
                    )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip
                )
            self.optimizer.step()
            clamp_logit_scale(model)
            self.step += 1
            losses.append(float(loss.detach()))
            if self.step % cfg.log_every == 0 or b + 1 == self.steps_per_epoch:
                rate = (b + 1) * cfg.batch_size / (time.perf_counter() - t0)
                left = (self.total_steps - self.step) * cfg.batch_size / rate
                log.info(
                    "epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f samples/s ETA %s",
                    self.epoch + 1, cfg.epochs, self.step, self.total_steps, losses[-1], lr,
                    rate, time.strftime("%H:%M:%S", time.gmtime(left)),
                )  # fmt: skip
        return float(np.mean(losses))

    def _texts_for(
        self, rows: np.ndarray, captions: np.ndarray
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """The batch's text rows: one caption per image, then ``keyword_texts`` nouns of
        randomly chosen images (seeded by run, epoch and step) with the (images, keywords)
        matrix of which images each keyword matches; no matrix without keywords."""
        if not self.keywords:
            return captions, None
        rng = np.random.default_rng([self.cfg.seed, self.epoch, self.step, 1])
        has = np.flatnonzero(self.keyword_of[rows].any(axis=1))
        picked = rng.choice(has, min(self.cfg.keyword_texts, len(has)), replace=False)
        words = np.array(
            [rng.choice(np.flatnonzero(self.keyword_of[rows[i]])) for i in picked], np.int64
        )
        positives = self.keyword_of[rows][:, words]
        return np.concatenate([captions, len(self.captions) + words]), torch.from_numpy(positives)

    @torch.inference_mode()
    def validate(self) -> dict[str, Any]:
        """Recall on the val split, through exactly the tops being trained."""
        self._train_mode(False)
        image_emb, text_emb = [], []
        for lo in range(0, len(self.val_images), self.cfg.eval_batch_size):
            rows = np.arange(lo, min(lo + self.cfg.eval_batch_size, len(self.val_images)))
            with self._autocast():
                feats = self.image_split.top(self._image_batch(self.val_view, rows))
            image_emb.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        pooled = self.text_split.layers == 0
        for lo in range(0, len(self.val_captions), self.cfg.eval_batch_size):
            rows = np.arange(lo, min(lo + self.cfg.eval_batch_size, len(self.val_captions)))
            hidden, mask = text_batch(*self.val_text, rows, pooled)
            with self._autocast():
                feats = self.text_split.top(hidden.to(self.device), mask.to(self.device))
            text_emb.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        image_emb_all = np.concatenate(image_emb)
        result = retrieval_metrics(image_emb_all, np.concatenate(text_emb), self.val_t2i)
        if self.keywords:  # one-word queries, as `clipsearch eval keywords` measures them
            hidden, mask = text_batch(
                *self.val_keyword_text, np.arange(len(self.val_keywords)), pooled
            )
            with self._autocast():
                feats = self.text_split.top(hidden.to(self.device), mask.to(self.device))
            words = F.normalize(feats.float(), dim=-1).cpu().numpy()
            result["keywords"] = ranking_metrics(words @ image_emb_all.T, self.val_keyword_of.T)
        return result

    # --- checkpoints ----------------------------------------------------------------------
    @property
    def omitted_prefixes(self) -> tuple[str, ...]:
        """What the exported model leaves out: the frozen bottoms, which load from packages."""
        return self.image_split.frozen_prefixes() + self.text_split.frozen_prefixes()

    def save_checkpoint(self) -> None:
        state = {
            "format": CACHE_FORMAT,
            "model": self.loaded.name,
            "state_dict": self.loaded.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "config": json.loads(json.dumps(asdict(self.cfg))),
        }
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, self.out / "checkpoints" / "latest.pt")

    def resume(self) -> None:
        path = self.out / "checkpoints" / "latest.pt"
        state = read_checkpoint(path, self.device)
        if state.get("model") != self.loaded.name or state.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"{path} holds another run ({state.get('model')!r})")
        self.loaded.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.build_caches()
        log.info("caches ready in %.0f s", time.perf_counter() - t0)
        result: dict[str, Any] = {}
        with open(self.out / "metrics.jsonl", "a") as metrics:
            if self.epoch == 0:
                val = self.validate()
                metrics.write(json.dumps({"epoch": 0, "val": val}) + "\n")
                log.info("epoch 0 validation: %s", json.dumps(val))
            while self.epoch < self.cfg.epochs:
                loss = self.train_epoch()
                self.epoch += 1
                val = self.validate()
                score = sum(v for d in ("image_to_text", "text_to_image") for v in val[d].values())
                if "keywords" in val:  # P@10 in points, as the recalls are
                    score += 100 * val["keywords"]["P@10"]
                elapsed = round(time.perf_counter() - t0, 1)
                entry = {"epoch": self.epoch, "step": self.step, "loss": loss, "val": val,
                         "score": score, "elapsed_s": elapsed}  # fmt: skip
                metrics.write(json.dumps(entry) + "\n")
                metrics.flush()
                log.info("epoch %d validation: %s", self.epoch, json.dumps(val))
                if score > self.best:
                    self.best, result = score, entry
                    weights.export_model_dir(
                        self.loaded.model,
                        self.loaded.name,
                        self.out / "best",
                        extra={"epoch": self.epoch, "step": self.step, "val": val},
                        omit_prefixes=self.omitted_prefixes,
                    )
                self.save_checkpoint()
        return result


def train_cached(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run the cached-trunk recipe (single process; the caches make it CPU-sized)."""
    torch.manual_seed(cfg.seed)
    trainer = CachedTrainer(cfg)
    if resume:
        trainer.resume()
    return trainer.run()

"""Contrastive training of a dual encoder: single process or ``torchrun``, resumable exactly.

Each epoch visits every image once with one of its captions drawn at random, so a batch never holds
the same image twice (which would turn true pairs into negatives). The data order, the caption draw
and the augmentation seeds are functions of (seed, epoch), and every rank's torch RNG (CPU and
CUDA) is saved with every checkpoint, so ``--resume`` continues the same loss curve as a run that
never stopped. ``accum_steps`` micro-batches form one contrastive batch (``models.accumulation``).

With ``lock_text`` the frozen text trunk runs once per caption before training (LiT-style); only
the text projection is then trained, which saves most of the text tower's compute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models import registry, rng, weights
from models.accumulation import accumulate_gradients
from models.data import Pair, read_pairs
from models.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from models.encoder import Encoder, LoadedModel, auto_precision, load_model
from models.errors import CheckpointError, ClipsearchError
from models.images import open_rgb
from models.loss import clamp_logit_scale, create_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: one RNG state per rank; 1 (still read): rank 0's CPU state only
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    data: str
    out: str
    image_root: str | None = None
    val_data: str | None = None
    split: str | None = None
    val_split: str | None = None
    image_col: str = "filepath"
    text_col: str = "caption"
    model: str = registry.DEFAULT_MODEL
    pretrained: str | None = None
    loss: str = "clip"
    local_loss: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    accum_steps: int = 1
    grad_clip: float | None = 1.0
    precision: str = "auto"
    seed: int = 0
    lock_image: bool = False
    lock_text: bool = False
    aug_scale: tuple[float, float] | None = (0.5, 1.0)
    workers: int = 2
    device: str = "auto"
    eval_batch_size: int = 128
    log_every: int = 10
    checkpoint_every: int = 1
    # The cached-trunk recipe (models.cached_train): frozen bottoms run once per view.
    cached_trunks: bool = False
    image_views: int = 2
    keyword_texts: int = 0
    unlock_image_stages: int = 0
    unlock_text_layers: int = 0
    trunk_lr_scale: float = 0.1
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warmup to ``base_lr``, then cosine decay to zero at ``total`` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def group_by_image(pairs: list[Pair]) -> tuple[list[Path], list[list[int]], list[str]]:
    """Unique images in first-seen order, the caption indices of each, and unique captions."""
    captions: dict[str, int] = {}
    by_image: dict[Path, list[int]] = defaultdict(list)
    for p in pairs:
        by_image[p.image].append(captions.setdefault(p.text, len(captions)))
    images = list(by_image)
    return images, [by_image[i] for i in images], list(captions)


class EpochPairs(Dataset):
    """One epoch's (image, caption index) list: decoding and augmentation run in the workers."""

    def __init__(self, items: list[tuple[Path, int]], transform: Callable, draft: int) -> None:
        self.items, self.transform, self.draft = items, transform, draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, caption = self.items[i]
        try:
            image = open_rgb(path, draft_size=self.draft)
        except OSError as e:
            raise ClipsearchError(f"cannot read training image {path}: {e}") from e
        return self.transform(image), caption


class TextTower(nn.Module):
    """The trainable text path: full encoder, or only the head over cached trunk outputs."""

    def __init__(self, model: nn.Module, cached: bool) -> None:
        super().__init__()
        self.model, self.cached = model, cached

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if not self.cached:
            return self.model.encode_text(text, normalize=True)
        head = getattr(self.model.text, "proj", None) if hasattr(self.model, "text") else None
        return F.normalize(head(text) if head is not None else text, dim=-1)


class ContrastiveModel(nn.Module):
    """Both towers in one forward, the module that DDP wraps."""

    def __init__(self, model: nn.Module, text_cached: bool) -> None:
        super().__init__()
        self.model = model
        self.text_tower = TextTower(model, text_cached)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images, normalize=True), self.text_tower(text)


@torch.inference_mode()
def text_trunk_features(
    loaded: LoadedModel,
    captions: list[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Outputs of the frozen text trunk for every caption (what the trainable head consumes).

    ``amp_dtype`` is the run's autocast dtype (None: fp32), as in the training step.
    """
    model = loaded.model
    was_training = model.training
    model.eval()
    order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
    out = torch.empty(0)
    for start in tqdm(
        range(0, len(order), 256), desc="caching text features", unit="batch", disable=None
    ):
        idx = order[start : start + 256]
        tokens = loaded.tokenizer([captions[i] for i in idx])
        with autocast(device, amp_dtype):
            feats = trunk_outputs(loaded, tokens, device)
        if out.numel() == 0:
            out = torch.empty(len(captions), feats.shape[1])
        out[idx] = feats
    model.train(was_training)
    return out


def trunk_outputs(loaded: LoadedModel, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The text tower's output before its trainable head (the projection), as float32 on the CPU."""
    model = loaded.model
    if loaded.has_hf_text:
        # open_clip's HFTextEncoder.forward up to its projection (tests/test_open_clip_api.py
        # pins it). Batches of similar length (sorted by the caller), cut to their longest.
        tokens = loaded.trim_padding(tokens).to(device)
        mask = (tokens != model.text.config.pad_token_id).long()
        hidden = model.text.transformer(input_ids=tokens, attention_mask=mask)
        return model.text.pooler(hidden, mask).float().cpu()
    return model.encode_text(tokens.to(device), normalize=False).float().cpu()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, embeddings of size 1 and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim < 2 or "bn" in name or "ln" in name or "logit_" in name
        (no_decay if excluded else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32); ``auto`` is bf16 where supported."""
    if precision not in PRECISIONS:
        raise ClipsearchError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16 if auto_precision(device) == "bf16" else None
    if precision == "fp16" and device.type != "cuda":
        raise ClipsearchError("fp16 needs a GPU; on the CPU use --precision bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``; off when ``dtype`` is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file, fsync, then rename: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A run's ``latest.pt``, or a CheckpointError that says what is wrong with it."""
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


class Trainer:
    """Owns one run: model, data, optimizer, checkpoints and logs under ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.device = dist.device
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)

        self.pairs = read_pairs(
            cfg.data, cfg.image_root, cfg.image_col, cfg.text_col, split=cfg.split
        )
        self.val_pairs = None
        if cfg.val_data:
            self.val_pairs = read_pairs(
                cfg.val_data, cfg.image_root, cfg.image_col, cfg.text_col, split=cfg.val_split
            )
        self.images, self.captions_of, self.captions = group_by_image(self.pairs)
        if len(self.images) < cfg.batch_size * dist.world_size:
            raise ClipsearchError(
                f"{len(self.images)} distinct images are fewer than one global batch "
                f"({cfg.batch_size} x {dist.world_size}); lower --batch-size"
            )

        aug = {"scale": tuple(cfg.aug_scale)} if cfg.aug_scale else {"scale": (1.0, 1.0)}
        self.loaded = load_model(cfg.model, cfg.pretrained, device=self.device, aug_cfg=aug)
        model = self.loaded.model
        if cfg.lock_image:
            model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        if cfg.lock_text:
            model.lock_text_tower(unlocked_layers=0)
        self.text_cached = cfg.lock_text
        self.text_inputs = (
            self.cached_text_features()
            if self.text_cached
            else self.loaded.tokenizer(self.captions)
        )
        self.channels_last = self.device.type == "cpu" and "timm_model_name" in (
            registry.raw_config(self.loaded.name).get("vision_cfg", {})
        )
        if self.channels_last:
            model.visual.to(memory_format=torch.channels_last)

        self.loss_fn = create_loss(cfg.loss, cfg.local_loss)
        if cfg.loss == "siglip" and model.logit_bias is None:
            # SigLIP's initialisation: t = 10, b = -10 (the bias is not exported: it only shapes
            # the loss, never the embeddings).
            model.logit_bias = nn.Parameter(torch.tensor([-10.0], device=self.device))
            with torch.no_grad():
                model.logit_scale.fill_(math.log(10.0))
        self.net: nn.Module = ContrastiveModel(model, self.text_cached)
        if dist.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dist.local_rank] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        per_rank = len(self.images) // dist.world_size
        self.steps_per_epoch = per_rank // cfg.batch_size // cfg.accum_steps
        if self.steps_per_epoch == 0:
            raise ClipsearchError("batch size x accumulation exceeds the data; lower them")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch, self.step, self.best = 0, 0, -1.0

    def cached_text_features(self) -> torch.Tensor:
        """The frozen trunk's outputs, kept in OUT so that a resumed run skips recomputing them."""
        source = self.loaded.source
        key = hashlib.sha256(
            json.dumps(
                [self.loaded.name, source.describe(), str(self.amp_dtype), self.captions]
            ).encode()
        ).hexdigest()
        if source.path is not None:
            key += f"-{source.path.stat().st_size}-{source.path.stat().st_mtime_ns}"
        path = self.out / "text_features.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached.get("key") == key:
                return cached["features"]
        features = text_trunk_features(self.loaded, self.captions, self.device, self.amp_dtype)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"key": key, "features": features}, path)
        return features

    # --- data -----------------------------------------------------------------------------
    def epoch_loader(self, epoch: int) -> DataLoader:
        """This rank's shard of the epoch, in an order fixed by (seed, epoch)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(len(self.images))
        items = [(self.images[i], int(rng.choice(self.captions_of[i]))) for i in order]
        usable = len(items) - len(items) % (self.dist.world_size * self.cfg.batch_size)
        shard = items[:usable][self.dist.rank :: self.dist.world_size]
        dataset = EpochPairs(shard, self.loaded.preprocess_train, self.loaded.image_size)
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=False,
            drop_last=True,
            num_workers=self.cfg.workers,
            generator=generator,
            persistent_workers=False,
        )

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self, rng_states: list[rng.RngState]) -> dict[str, Any]:
        """Everything ``resume`` restores; ``rng_states`` holds every rank's, in rank order."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.loaded.name,
            "state_dict": self.loaded.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "rng": rng_states,
            "config": json.loads(json.dumps(asdict(self.cfg))),
        }

    def save_checkpoint(self, rng_states: list[rng.RngState]) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.checkpoint_state(rng_states), self.ckpt_dir / "latest.pt")

    def resume(self, path: Path | None = None) -> None:
        """Restore model, optimizer, step, epoch and RNG from ``latest.pt`` (or ``path``)."""
        path = path or self.ckpt_dir / "latest.pt"
        state = read_checkpoint(path, self.device)
        if state.get("format") not in (1, CHECKPOINT_FORMAT):
            raise CheckpointError(
                f"{path} has checkpoint format {state.get('format')}, this version reads "
                f"1 and {CHECKPOINT_FORMAT}: train again, or resume with the version that wrote it"
            )
        if state.get("model") != self.loaded.name:
            raise CheckpointError(
                f"{path} holds a run of {state.get('model')!r}, not {self.loaded.name!r}"
            )
        self.loaded.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        rng_states = state.get("rng") or [{"cpu": state["torch_rng"]}]
        if len(rng_states) == self.dist.world_size:
            rng.restore(rng_states[self.dist.rank], self.device)
        else:
            log.warning(
                "%s was written by %d processes, this run has %d: random draws (dropout) will "
                "not continue exactly",
                path,
                len(rng_states),
                self.dist.world_size,
            )
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # --- loop -----------------------------------------------------------------------------
    def model_inputs(
        self, images: torch.Tensor, caption_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch as the towers take it, on the device."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        text = self.text_inputs[caption_idx]
        if not self.text_cached:
            # Cut per micro-batch: accumulation splices features, not tokens.
            text = self.loaded.trim_padding(text)
        return images, text.to(self.device, non_blocking=True)

    def batch_loss(
        self, image_f: torch.Tensor, text_f: torch.Tensor, with_temperature: bool
    ) -> torch.Tensor:
        """The loss over the whole (global) batch; without gradients to the temperature if told."""
        model = self.loaded.model
        params = [model.logit_scale] + ([model.logit_bias] if self.cfg.loss == "siglip" else [])
        if not with_temperature:
            params = [p.detach() for p in params]
        return self.loss_fn(image_f.float(), text_f.float(), *params)

    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step over ``accum_steps`` micro-batches as one contrastive batch.

        Returns the loss of that batch.
        """
        lr = lr_at(self.step, self.total_steps, self.cfg.lr, self.cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(
            self.net,
            [self.model_inputs(images, idx) for images, idx in batches],
            self.batch_loss,
            self.device,
            backward=lambda value: self.scaler.scale(value).backward(),
            autocast=lambda: autocast(self.device, self.amp_dtype),
        )
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.loaded.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        clamp_logit_scale(self.loaded.model)
        self.step += 1
        return loss

    def validate(self) -> dict[str, Any] | None:
        """Retrieval recall on the validation pairs (main rank only)."""
        if self.val_pairs is None or not self.dist.is_main:
            return None
        from models.evaluate import evaluate_retrieval

        model = self.loaded.model
        encoder = Encoder(self.loaded, self.device, "fp32")
        try:
            return evaluate_retrieval(
                encoder,
                self.val_pairs,
                batch_size=self.cfg.eval_batch_size,
                num_workers=self.cfg.workers,
            )
        finally:
            model.train()

    def run(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train until ``cfg.epochs`` (or ``stop_after_epoch``, to simulate a crash in tests)."""
        metrics_path = self.out / "metrics.jsonl"
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log.info(
                "training %s on %d images (%d captions), %d steps of %d x %d x %d",
                self.loaded.name,
                len(self.images),
                len(self.captions),
                self.total_steps,
                self.cfg.batch_size,
                self.cfg.accum_steps,
                self.dist.world_size,
            )
        result: dict[str, Any] = {}
        samples_per_step = self.cfg.batch_size * self.cfg.accum_steps * self.dist.world_size
        while self.epoch < self.cfg.epochs:
            self.loaded.model.train()
            if self.cfg.lock_image:
                self.loaded.model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
            t0 = time.perf_counter()
            pending: list[tuple[torch.Tensor, torch.Tensor]] = []
            done = 0
            for batch in self.epoch_loader(self.epoch):
                pending.append(batch)
                if len(pending) < self.cfg.accum_steps:
                    continue
                loss = all_reduce_mean(self.train_step(pending))
                pending, done = [], done + 1
                if self.dist.is_main:
                    rate = done * samples_per_step / (time.perf_counter() - t0)
                    left = (self.total_steps - self.step) * samples_per_step / rate
                    row = {"epoch": self.epoch + 1, "step": self.step, "loss": loss}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row | {"samples_per_s": round(rate, 1)}) + "\n")
                    if self.step % self.cfg.log_every == 0 or done == self.steps_per_epoch:
                        log.info(
                            "epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f samples/s ETA %s",
                            self.epoch + 1,
                            self.cfg.epochs,
                            self.step,
                            self.total_steps,
                            loss,
                            self.optimizer.param_groups[0]["lr"],
                            rate,
                            time.strftime("%H:%M:%S", time.gmtime(left)),
                        )
                if done == self.steps_per_epoch:
                    break
            self.epoch += 1
            if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs:
                val = self.validate()
                rng_states = all_gather_object(rng.capture(self.device))
                if self.dist.is_main:
                    result = self.end_epoch(val, metrics_path, rng_states)
                barrier()
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        return result

    def end_epoch(
        self, val: dict[str, Any] | None, metrics_path: Path, rng_states: list[rng.RngState]
    ) -> dict[str, Any]:
        """Log validation, export the best model, then checkpoint (main rank)."""
        score = (
            self.step
            if val is None
            else sum(
                v
                for direction in ("image_to_text", "text_to_image")
                for v in val[direction].values()
            )
        )
        entry = {"epoch": self.epoch, "step": self.step, "val": val, "score": score}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if val is not None:
            log.info("epoch %d validation: %s", self.epoch, json.dumps(val))
        if score > self.best:
            self.best = score
            weights.export_model_dir(
                self.loaded.model,
                self.loaded.name,
                self.out / "best",
                extra={"epoch": self.epoch, "step": self.step, "val": val},
                omit_prefixes=("text.transformer.",)
                if self.text_cached and self.loaded.has_hf_text
                else (),
            )
        self.save_checkpoint(rng_states)
        return entry


def train(cfg: TrainConfig, resume: bool = False, stop_after_epoch: int | None = None) -> dict:
    """Run training as configured; under torchrun every rank calls this."""
    if cfg.cached_trunks:
        from models.cached_train import train_cached

        return train_cached(cfg, resume=resume)
    dist = init_distributed(cfg.device)
    try:
        torch.manual_seed(cfg.seed + dist.rank)
        trainer = Trainer(cfg, dist)
        if resume:
            trainer.resume()
        return trainer.run(stop_after_epoch=stop_after_epoch)
    finally:
        cleanup_distributed()

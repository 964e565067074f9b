"""Retrieval recall (image↔text R@K) and zero-shot classification accuracy.

The metric functions work on embeddings alone (L2-normalised rows, so the inner product is the
cosine similarity) and never hold more than a bounded block of the similarity matrix, so they scale
to 1k x 5k (Flickr8k/30k test splits) and far beyond. The ``evaluate_*`` functions embed a dataset
read with ``models.data.read_pairs`` and call them.

Ranks are deterministic: candidates with equal scores are ordered by index, as a stable sort would.
All results are percentages.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models import hubness
from models.data import Pair
from models.encoder import Encoder
from models.errors import DataError
from models.images import open_rgb

DEFAULT_KS = (1, 5, 10)
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
)
# Most similarity scores held at once (float32): 4M entries = 16 MiB, plus masks of the same shape.
MAX_BLOCK = 1 << 22


# ---------------------------------------------------------------------------------------------
# Metrics on embeddings


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _as_index(x: np.ndarray, name: str, length: int, upper: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer {what} indices, got dtype {x.dtype}")
    if length and (x.min() < 0 or x.max() >= upper):
        raise ValueError(f"{name} holds {what} indices outside [0, {upper})")
    return x.astype(np.int64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _rows_per_block(columns: int, max_block: int) -> int:
    return max(1, max_block // max(1, columns))


def _rank_of(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of column ``target[r]`` in each row of ``scores``; ties go to lower index."""
    rows = np.arange(scores.shape[0])
    best = scores[rows, target][:, None]
    ahead = (scores > best).sum(axis=1)
    cols = np.arange(scores.shape[1])[None, :]
    ahead += ((scores == best) & (cols < target[:, None])).sum(axis=1)
    return ahead


def _recalls(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    return {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    max_block: int = MAX_BLOCK,
    image_penalty: np.ndarray | None = None,
    penalized: np.ndarray | None = None,
) -> dict:
    """Recall@K both ways, in percent.

    ``text_to_image[j]`` is the index (row of ``image_emb``) of the image caption ``j`` describes.
    Text→image: a caption is a hit at K when its image is among the K best images.
    Image→text: an image is a hit at K when ANY of its captions is among the K best texts.
    Every image needs at least one caption.
    ``image_penalty`` (n_images,) is subtracted from the text→image scores of the captions that
    ``penalized`` (n_texts, bool; default all) marks: the hubness correction (``models.hubness``).
    """
    image_emb = _as_matrix(image_emb, "image_emb")
    text_emb = _as_matrix(text_emb, "text_emb")
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb differ in dimension: {image_emb.shape[1]} != "
            f"{text_emb.shape[1]}"
        )
    t2i = _as_index(text_to_image, "text_to_image", n_texts, n_images, "image")
    ks = _check_ks(ks)
    counts = np.bincount(t2i, minlength=n_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            f"{len(missing)} image(s) have no caption in text_to_image (first: {missing[0]})"
        )

    if image_penalty is not None:
        image_penalty = np.asarray(image_penalty, np.float32)
        if image_penalty.shape != (n_images,):
            raise ValueError(f"image_penalty must be ({n_images},), not {image_penalty.shape}")
        penalized = np.ones(n_texts, bool) if penalized is None else np.asarray(penalized, bool)
        if penalized.shape != (n_texts,):
            raise ValueError(f"penalized must be ({n_texts},), not {penalized.shape}")

    # Text -> image: rank of each caption's own image among all images.
    t2i_ranks = np.empty(n_texts, np.int64)
    step = _rows_per_block(n_images, max_block)
    for lo in range(0, n_texts, step):
        hi = min(lo + step, n_texts)
        scores = text_emb[lo:hi] @ image_emb.T
        if image_penalty is not None:
            scores -= penalized[lo:hi, None] * image_penalty[None, :]
        t2i_ranks[lo:hi] = _rank_of(scores, t2i[lo:hi])

    # Image -> text: rank of each image's best-ranked caption among all texts. With ties broken
    # by index, the best-ranked caption is the highest-scoring one (lowest index among equals).
    i2t_ranks = np.empty(n_images, np.int64)
    step = _rows_per_block(n_texts, max_block)
    for lo in range(0, n_images, step):
        hi = min(lo + step, n_images)
        scores = image_emb[lo:hi] @ text_emb.T
        own = t2i[None, :] == np.arange(lo, hi)[:, None]
        best = np.where(own, scores, -np.inf).argmax(axis=1)
        i2t_ranks[lo:hi] = _rank_of(scores, best)

    return {
        "image_to_text": _recalls(i2t_ranks, ks),
        "text_to_image": _recalls(t2i_ranks, ks),
        "n_images": int(n_images),
        "n_texts": int(n_texts),
    }


def zeroshot_metrics(
    image_emb: np.ndarray,
    class_emb: np.ndarray,
    labels: np.ndarray,
    max_block: int = MAX_BLOCK,
) -> dict:
    """Top-1/top-5 accuracy (percent) of classifying each image by its most similar class.

    ``labels[i]`` is the index (row of ``class_emb``) of image ``i``'s true class. With fewer
    than 5 classes, top-5 means top-``n_classes`` (so 100).
    """
    image_emb = _as_matrix(image_emb, "image_emb")
    class_emb = _as_matrix(class_emb, "class_emb")
    if image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(
            f"image_emb and class_emb differ in dimension: {image_emb.shape[1]} != "
            f"{class_emb.shape[1]}"
        )
    n, n_classes = image_emb.shape[0], class_emb.shape[0]
    labels = _as_index(labels, "labels", n, n_classes, "class")
    ranks = np.empty(n, np.int64)
    step = _rows_per_block(n_classes, max_block)
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        ranks[lo:hi] = _rank_of(image_emb[lo:hi] @ class_emb.T, labels[lo:hi])
    return {
        "top1": float(100.0 * np.mean(ranks < 1)),
        "top5": float(100.0 * np.mean(ranks < min(5, n_classes))),
        "n": int(n),
    }


# ---------------------------------------------------------------------------------------------
# Embedding a dataset


class _ImageFiles(Dataset):
    """Decodes and preprocesses images, in DataLoader workers when there are any."""

    def __init__(self, items: Sequence[tuple[Path, int]], encoder: Encoder) -> None:
        self.items = list(items)
        self.preprocess = encoder.preprocess
        self.draft_size = encoder.image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        path, line = self.items[i]
        try:
            image = open_rgb(path, draft_size=self.draft_size)
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"line {line}: cannot read image {path}: {e}") from e
        return self.preprocess(image)


def _progress(total: int, desc: str, progress: bool | None) -> tqdm:
    # None: tqdm decides (shown on a terminal, hidden when stderr is redirected).
    return tqdm(
        total=total,
        desc=desc,
        unit="img" if desc.startswith("image") else "txt",
        file=sys.stderr,
        disable=None if progress is None else not progress,
        leave=False,
        dynamic_ncols=True,
    )


def embed_image_files(
    encoder: Encoder,
    items: Sequence[tuple[Path, int]],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | None = None,
) -> np.ndarray:
    """Embed ``(path, line)`` items in order; decoding runs in ``num_workers`` processes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    loader = DataLoader(
        _ImageFiles(items, encoder),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=encoder.device.type == "cuda",
    )
    out = [np.zeros((0, encoder.dim), np.float32)]
    with _progress(len(items), "images", progress) as bar:
        for batch in loader:
            out.append(encoder.encode_image_tensor(batch))
            bar.update(len(batch))
    return np.concatenate(out)


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int = 64,
    progress: bool | None = None,
) -> np.ndarray:
    """Embed strings in order, with a progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = [np.zeros((0, encoder.dim), np.float32)]
    with _progress(len(texts), "texts", progress) as bar:
        for lo in range(0, len(texts), batch_size):
            chunk = texts[lo : lo + batch_size]
            out.append(encoder.encode_texts(chunk, batch_size=batch_size))
            bar.update(len(chunk))
    return np.concatenate(out)


def _unique_images(pairs: Sequence[Pair]) -> tuple[list[tuple[Path, int]], np.ndarray]:
    """Distinct images, first-seen order, each with the line naming it first; each pair's image."""
    index: dict[Path, int] = {}
    items: list[tuple[Path, int]] = []
    of_pair = np.empty(len(pairs), np.int64)
    for j, pair in enumerate(pairs):
        i = index.get(pair.image)
        if i is None:
            i = index[pair.image] = len(items)
            items.append((pair.image, pair.line))
        of_pair[j] = i
    return items, of_pair


def evaluate_retrieval(
    encoder: Encoder,
    pairs: Sequence[Pair],
    batch_size: int = 64,
    num_workers: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    progress: bool | None = None,
    hubness_correction: bool = True,
) -> dict:
    """Image↔text recall@K over ``pairs`` (each an image and one of its captions).

    Images are the distinct paths, in first-seen order; every row is one caption. Text→image
    ranks as search does: with the model's hubness correction for specific captions when it has a
    query bank (``models.hubness``; the uncorrected figures come back as well), unless
    ``hubness_correction`` is off.
    """
    if not pairs:
        raise DataError("no (image, caption) pairs to evaluate")
    items, text_to_image = _unique_images(pairs)
    image_emb = embed_image_files(encoder, items, batch_size, num_workers, progress)
    texts = [p.text for p in pairs]
    text_emb = embed_texts(encoder, texts, batch_size, progress)
    bank = encoder.query_bank if hubness_correction else None
    if bank is None:
        return retrieval_metrics(image_emb, text_emb, text_to_image, ks)
    plain = retrieval_metrics(image_emb, text_emb, text_to_image, ks)
    penalty, rows = bank.penalty(image_emb), np.array([hubness.specific(t) for t in texts])
    result = retrieval_metrics(
        image_emb, text_emb, text_to_image, ks, image_penalty=penalty, penalized=rows
    )
    result["text_to_image_uncorrected"] = plain["text_to_image"]
    result["hubness_k"], result["hubness_weight"] = bank.k, bank.weight
    return result


def class_embeddings(
    encoder: Encoder,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
) -> np.ndarray:
    """One unit vector per class: the renormalised mean of its normalised template embeddings."""
    if not templates:
        raise ValueError("templates is empty")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"every template needs a '{{}}' for the class name: {bad[0]!r}")
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encoder.encode_texts(texts, batch_size=batch_size).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    mean = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-12)


def evaluate_zeroshot(
    encoder: Encoder,
    pairs: Sequence[Pair],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict:
    """Zero-shot accuracy where each ``Pair.text`` is the image's class label.

    The classes are the distinct labels (first-seen order); each row counts once.
    """
    if not pairs:
        raise DataError("no (image, label) pairs to evaluate")
    classnames = list(dict.fromkeys(p.text for p in pairs))
    class_of = {c: i for i, c in enumerate(classnames)}
    items, image_of_pair = _unique_images(pairs)
    image_emb = embed_image_files(encoder, items, batch_size, num_workers, progress)
    class_emb = class_embeddings(encoder, classnames, templates, batch_size)
    labels = np.array([class_of[p.text] for p in pairs], np.int64)
    return zeroshot_metrics(image_emb[image_of_pair], class_emb, labels)

"""Hubness correction for text→image search: CSLS against a bank of typical queries.

In a joint embedding space some images ("hubs") sit close to very many captions and crowd the top
of the results for queries they do not match. Cross-domain similarity local scaling (CSLS; Lample et
al. 2018, the idea behind QB-Norm's query banks) ranks image ``x`` for query ``q`` by
``cos(q, x) - weight * r(x)``, where ``r(x)`` is the mean similarity of ``x`` to its ``k`` nearest
queries of a *bank* of typical queries (here: training captions, embedded by the same model). The
query's own term of CSLS is the same for every image of one query, so it is left out.

The bank is a file of the model directory (``query_bank.npz``), tied to the weights it was embedded
with (their sha256): ``r(x)`` depends only on the image's vector and the bank, so an index computes
it for the candidates a query fetches and needs no stored column. This module imports only numpy:
a search that embeds its query with the torch-free text tower uses it too.

It applies to *specific* queries (more than :data:`SHORT_WORDS` words): on Flickr8k val it lifts
sentence queries (text→image R@10 65.7 → 68.5) but costs one-word queries precision, since the
photos of a broad concept ("dog") are exactly the dense region it penalises (models/MODEL_CARD.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ModelError

log = logging.getLogger(__name__)
BANK_FILE = "query_bank.npz"
SHORT_WORDS = 2  # queries of at most this many words are broad: no correction
# Candidates a corrected search re-ranks: at least this many, and this many times k.
MIN_POOL, POOL_FACTOR = 50, 5
_CHUNK = 512  # images per block of bank similarities (bank rows x 512 float32)


def specific(query: str) -> bool:
    """Whether the correction applies to this text query (longer than a few words)."""
    return len(query.split()) > SHORT_WORDS


def pool_size(k: int) -> int:
    """Candidates to fetch so that the corrected top ``k`` is (almost always) among them."""
    return max(MIN_POOL, POOL_FACTOR * k)


@dataclass(frozen=True)
class QueryBank:
    """Unit query vectors (n, dim) and the CSLS settings, for the weights named by their sha256."""

    vectors: np.ndarray
    k: int
    weight: float
    weights_sha256: str

    def __post_init__(self) -> None:
        v = self.vectors
        if v.ndim != 2 or v.shape[0] < 1:
            raise ModelError(f"a query bank needs a (n, dim) matrix, not shape {v.shape}")
        if not 1 <= self.k <= v.shape[0]:
            raise ModelError(f"query bank k={self.k} must be between 1 and its {v.shape[0]} rows")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def hubness(self, images: np.ndarray) -> np.ndarray:
        """``r(x)`` of each row of ``images`` (m, dim): mean cosine to its ``k`` nearest queries."""
        images = np.asarray(images, np.float32)
        if images.ndim != 2 or images.shape[1] != self.dim:
            raise ValueError(f"images must be (m, {self.dim}), not {images.shape}")
        out = np.empty(len(images), np.float32)
        for lo in range(0, len(images), _CHUNK):
            sims = self.vectors @ images[lo : lo + _CHUNK].T  # (n, chunk)
            top = np.partition(sims, len(sims) - self.k, axis=0)[len(sims) - self.k :]
            out[lo : lo + _CHUNK] = top.mean(axis=0)
        return out

    def penalty(self, images: np.ndarray) -> np.ndarray:
        """What CSLS subtracts from each image's cosine: ``weight * r(x)``."""
        return self.weight * self.hubness(images)

    def save(self, path: Path) -> None:
        """Write ``path`` whole or not at all (a temporary file, then renamed over it)."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                vectors=self.vectors.astype(np.float16),
                k=np.int64(self.k),
                weight=np.float64(self.weight),
                weights_sha256=np.str_(self.weights_sha256),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> QueryBank:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    f["vectors"].astype(np.float32),
                    int(f["k"]),
                    float(f["weight"]),
                    str(f["weights_sha256"]),
                )
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"cannot read the query bank {path}: {e}") from e


def find(directory: str | Path | None, weights_sha256: str) -> QueryBank | None:
    """The bank of a model directory if it has one made with these weights, else None."""
    if directory is None:
        return None
    path = Path(directory) / BANK_FILE
    if not path.is_file():
        return None
    try:
        bank = QueryBank.load(path)
    except ModelError as e:
        log.warning("%s; searching without the hubness correction", e)
        return None
    if bank.weights_sha256 != weights_sha256:
        log.warning(
            "%s was embedded with other weights: ignored (rebuild it: clipsearch bank)", path
        )
        return None
    return bank


def sample(queries: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """At most ``size`` of the distinct ``queries``, drawn with ``seed``, in their first order."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    distinct = list(dict.fromkeys(queries))
    keep = np.random.default_rng(seed).permutation(len(distinct))[:size]
    return [distinct[i] for i in np.sort(keep)]

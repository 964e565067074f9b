"""The hubness correction (``models.hubness``) at search time, for one index's images.

A specific text query (a sentence, not one or two words) fetches ``hubness.pool_size(k)``
candidates, loses ``weight * r(x)`` from each candidate's score and keeps the best ``k``: the order
changes, a hit's ``score`` stays its cosine (cut-offs keep their meaning). ``r(x)`` comes from the
stored vector and the model's query bank, so nothing new is stored; it is computed once per image
and FAISS generation (an id's vector may change when its file does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from models import hubness

log = logging.getLogger(__name__)
MAX_CACHED = 1 << 20  # penalties held at most (then the cache starts again)
Lookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # ids -> (found ids, vectors)


class HubPenalties:
    """Penalties of the indexed images under one query bank, cached per FAISS generation."""

    def __init__(self, bank: hubness.QueryBank) -> None:
        self.bank = bank
        self._lock = threading.Lock()
        self._gen: int | None = None
        self._cache: dict[int, float] = {}

    @classmethod
    def for_model(cls, model: dict[str, Any]) -> HubPenalties | None:
        """For an index manifest's ``model``: its directory's bank, if any (torch-free)."""
        bank = hubness.find(model.get("pretrained"), str(model.get("weights_sha256")))
        if bank is not None and bank.dim != model.get("dim"):
            log.warning("the query bank's dim %d is not the model's: ignored", bank.dim)
            return None
        return None if bank is None else cls(bank)

    def of(self, ids: np.ndarray, gen: int, lookup: Lookup) -> np.ndarray:
        """Penalty of each id (>= 0) in ``ids``; ids the lookup lacks get 0."""
        with self._lock:
            if gen != self._gen or len(self._cache) > MAX_CACHED:
                self._gen, self._cache = gen, {}
            missing = np.array([i for i in np.unique(ids) if i >= 0 and i not in self._cache])
            if len(missing):
                found, vectors = lookup(missing)
                penalty = self.bank.penalty(vectors) if len(found) else []
                self._cache.update(zip(found.tolist(), map(float, penalty), strict=True))
            return np.array([self._cache.get(int(i), 0.0) for i in ids.ravel()], np.float32)

    def reorder(
        self,
        scores: np.ndarray,
        ids: np.ndarray,
        rows: np.ndarray,
        gen: int,
        lookup: Lookup,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` (bool, one per query) re-ordered by corrected score; others as they are.
        The penalties of all their candidates come in one lookup."""
        scores, ids = scores.copy(), ids.copy()
        sub = ids[rows]
        penalty = self.of(sub, gen, lookup).reshape(sub.shape)
        corrected = np.where(sub >= 0, scores[rows] - penalty, -np.inf)
        order = np.argsort(-corrected, axis=1, kind="stable")
        scores[rows] = np.take_along_axis(scores[rows], order, axis=1)
        ids[rows] = np.take_along_axis(sub, order, axis=1)
        return scores, ids

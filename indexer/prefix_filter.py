"""FAISS id selectors for "images under this path", cached per catalog generation."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import faiss

from indexer.catalog import Catalog

PREFIX_CACHE = 16  # path_prefix selectors kept


class PrefixSelectors:
    """An LRU of ``(selector or None, how many ids it allows)`` by (prefix, generation)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._cache: OrderedDict[tuple[str, int], tuple[faiss.IDSelector | None, int]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, path_prefix: str) -> tuple[faiss.IDSelector | None, int]:
        prefix = os.path.abspath(os.path.expanduser(path_prefix))
        if path_prefix.endswith(os.sep) and not prefix.endswith(os.sep):
            prefix += os.sep
        key = (prefix, self.catalog.generation())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        allowed = self.catalog.ids_with_prefix(prefix)
        entry = (faiss.IDSelectorBatch(allowed) if allowed.size else None, int(allowed.size))
        with self._lock:
            self._cache[key] = entry
            while len(self._cache) > PREFIX_CACHE:
                self._cache.popitem(last=False)
        return entry

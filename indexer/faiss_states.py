"""``FaissStates``: the FAISS index of each kind, kept current with the catalog and swapped whole.

Searches read ``current`` (a dict that is replaced, never mutated) once and search under the read
side of ``searching``; a delta changes the index in place under its write side (never a copy of
the whole index, which would double memory at scale), a rebuild is made on the side and swapped.
Bringing a state current loads the newest usable checkpoint and applies the catalog's changes
since (a delta), or rebuilds from the catalog's vectors when no checkpoint is usable or the right
index type has changed.

Readers never write: :meth:`refresh` works in memory only. :meth:`sync` (a writer, holding the
directory's write lock) also writes checkpoints, replacing damaged ones. A checkpoint whose FAISS
file fails its SHA-256 or does not parse is skipped like a missing one and reported in
``damaged`` until a writer replaces it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer import faiss_index as fx
from indexer.catalog import Catalog
from indexer.errors import IndexFormatError
from indexer.layout import (
    FILE_STEMS,
    Manifest,
    list_checkpoints,
    remove_stale_files,
    remove_tmp_files,
)
from indexer.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

KINDS = ("image", "text")


class FaissStates:
    """One published ``FaissState`` per kind for an index directory."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        catalog: Catalog,
        probes: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest  # shared with the Index, whose settings may change
        self.catalog = catalog
        self.probes = probes  # embedded text probes (``indexer.probes``) for tuning image indexes
        self.current: dict[str, fx.FaissState] = {}
        self.damaged: dict[str, str] = {}  # kind -> what is wrong with its newest checkpoint
        self._swap_lock = threading.RLock()
        self.searching = ReadWriteLock()  # searches read, in-place deltas write

    @property
    def dim(self) -> int:
        return int(self.manifest.model["dim"])

    def check_against_catalog(self) -> None:
        """Refuse a catalog older than the checkpoints beside it (restored from an old backup):
        its ids would not match theirs. Checkpoints are listed first: a writer commits the
        catalog before it writes a checkpoint, so a concurrent write cannot look like this."""
        newest = {k: list_checkpoints(self.directory, k)[:1] for k in KINDS}
        gen = self.catalog.generation()
        for kind, gens in newest.items():
            if gens and gens[0] > gen:
                stem = FILE_STEMS[kind]
                raise IndexFormatError(
                    f"the catalog of {self.directory} is at generation {gen}, older than the "
                    f"checkpoint {stem}.{gens[0]}.faiss beside it: it was replaced by an older "
                    "copy. If that copy is what you want, delete the checkpoint files "
                    "(*.faiss and their *.json) and they are rebuilt from the catalog; otherwise "
                    "restore the newer catalog.sqlite3"
                )

    def state(self, kind: str) -> fx.FaissState:
        states = self.current
        if kind not in states:
            self.refresh()
            states = self.current
        return states[kind]

    def clear(self) -> None:
        with self._swap_lock:
            self.current = {}

    # -- bringing states current ---------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring every state current in memory (a reader's load or reload); True if one changed."""
        with self._swap_lock:
            old = self.current
            new = {k: self._current(k, old.get(k)) for k in KINDS}
            self.current = new
        return any(new[k] is not old.get(k) for k in KINDS)

    def reload_if_changed(self) -> bool:
        """Pick up what other processes committed; True if a new index was swapped in."""
        gen = self.catalog.generation()
        states = self.current
        if states and all(s.gen == gen for s in states.values()):
            return False
        return self.refresh()

    def sync(self) -> None:
        """After a write (the caller holds the write lock): bring both states current, publish
        them and checkpoint them."""
        remove_tmp_files(self.directory)
        self.refresh()
        for s in self.current.values():
            if s.gen not in list_checkpoints(self.directory, s.kind) or s.kind in self.damaged:
                fx.save_checkpoint(self.directory, s)
                self.damaged.pop(s.kind, None)
            remove_stale_files(self.directory, s.kind, s.gen)

    def rebuild(self) -> None:
        """Drop every checkpoint and build both indexes from the catalog (write lock held)."""
        self.clear()
        for kind in KINDS:
            for g in list_checkpoints(self.directory, kind):
                remove_stale_files(self.directory, kind, g + 1)
        self.damaged.clear()
        self.sync()

    def _budgets(self, counts: dict[str, int]) -> dict[str, int | None]:
        budget = self.manifest.index.max_memory
        total = sum(counts.values())
        if budget is None or total == 0:
            return {k: budget for k in KINDS}
        return {k: int(budget * counts[k] / total) for k in KINDS}

    def _build(self, kind: str, spec: fx.Spec, gen: int) -> fx.FaissState:
        ids, vectors = self.catalog.vectors(kind)
        other = np.zeros((0, self.dim), np.float32)
        if spec.trained or spec.type == "hnsw":
            other_kind = "text" if kind == "image" else "image"
            other_ids = self.catalog.ids(other_kind)
            if len(other_ids):
                rng = np.random.default_rng(gen)
                pick = np.sort(
                    rng.choice(other_ids, size=min(len(other_ids), 20_000), replace=False)
                )
                _, other = self.catalog.vectors(other_kind, pick)
        probes = None  # text queries to hold out when the catalog has too few texts
        if kind == "image" and self.probes and spec.type != "flat" and fx.probes_needed(len(other)):
            probes = self.probes()
        return fx.build_state(
            kind, spec, self.dim, ids, vectors, other, gen, self.manifest.index.recall_target,
            probes=probes,
        )  # fmt: skip

    def _load_newest(self, kind: str, gen: int) -> fx.FaissState | None:
        """The newest checkpoint at or below ``gen`` that loads; damaged ones are noted."""
        for g in list_checkpoints(self.directory, kind):
            if g > gen:
                continue
            try:
                return fx.load_checkpoint(self.directory, kind, g, self.dim)
            except FileNotFoundError:  # removed by a writer meanwhile
                continue
            except IndexFormatError as e:
                if kind not in self.damaged:
                    log.warning("%s; rebuilding it from the catalog", e)
                self.damaged[kind] = str(e)
        return None

    def _current(self, kind: str, state: fx.FaissState | None) -> fx.FaissState:
        """``state`` brought up to the catalog's generation (a delta, or a rebuild when the right
        index for the data has changed); the caller holds ``_swap_lock``."""
        with self.catalog.snapshot():
            gen = self.catalog.generation()
            counts = {k: self.catalog.count_ok(k) for k in KINDS}
            spec = fx.choose_spec(
                self.manifest.index, counts[kind], self.dim, self._budgets(counts)[kind]
            )
            if state is None:
                state = self._load_newest(kind, gen)
            if state is not None and (
                not fits(state.spec, spec) or _needs_mixed_training(state, counts)
            ):
                state = None  # rebuild below
            if state is not None and state.gen == gen:
                return state
            if state is not None:
                remove, add_ids, add_vecs = self.catalog.delta(kind, state.gen)
                with self.searching.write():  # the delta changes the index searches use
                    new = fx.apply_delta(state, remove, add_ids, add_vecs, gen)
                if new is not None:
                    return new
            if counts[kind] == 0:
                return fx.empty_state(kind, self.dim, gen)
            return self._build(kind, spec, gen)


def _needs_mixed_training(state: fx.FaissState, counts: dict[str, int]) -> bool:
    """A trained index that learnt from one modality while the other now has vectors: retrain
    (text queries against an image-only quantizer lose recall: clip-retrieval #76)."""
    if not state.spec.trained:
        return False
    other = "text" if state.kind == "image" else "image"
    trained_other = state.info.get("trained_on", {}).get("other_modality", 0)
    return trained_other == 0 and counts[other] >= fx.MIN_OTHER_FOR_MIXING


def fits(have: fx.Spec, want: fx.Spec) -> bool:
    """Whether an index built as ``have`` still suits data that calls for ``want``."""
    if have.type != want.type:
        return False
    if have.trained:
        if not (want.nlist / 4 <= have.nlist <= want.nlist * 4):
            return False
        if have.type == "ivfpq" and (have.pq_m > want.pq_m or have.pq_nbits < want.pq_nbits):
            return False
    return True

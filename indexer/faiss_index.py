"""FAISS indexes: choosing one, training it, tuning it against exact search, saving it atomically.

Vectors are L2-normalised, so every index uses inner product (cosine). FAISS ids are the catalog's
stable ids: ``IDMap2`` wraps the flat and HNSW indexes, IVF indexes take ids natively.

``auto`` picks exact flat search below ``flat_threshold`` vectors and IVF-Flat above (IVF trains
in seconds where HNSW takes minutes per million, and supports removal, so incremental updates stay
cheap); IVF-PQ when the flat vectors would not fit ``max_memory``. Trained indexes learn from a
sample that mixes in vectors of the other modality when there are any (a quantizer trained on
images alone serves text queries badly: clip-retrieval #76), then ``nprobe`` / ``efSearch`` is
raised until recall@10 against exact search on held-out queries reaches the target for each
modality (an image index with few or no texts holds out embedded text probes instead,
``indexer.probes``: text queries need wider probing than images). The recall measured, that of
the worse modality, is stored with the checkpoint and shown by ``info``.

Updates change the index in place (a clone per delta would double the memory of a large index
on every write, and on-disk inverted lists cannot be cloned at all) and publish a new state for
it; the caller keeps searches out while a delta is applied (``Index`` does so with a
readers-writer lock).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure
from faiss.contrib.exhaustive_search import knn

from indexer.errors import DiskFullError, IndexError_, IndexFormatError
from indexer.layout import (
    INDEX_TYPES,
    IndexSettings,
    atomic_write_bytes,
    checkpoint_paths,
    fsync_dir,
    tmp_name,
)

log = logging.getLogger(__name__)

RECALL_K = 10
HELD_OUT = 100  # held-out queries per modality
MIN_TRAIN = 256  # fewer vectors than this: exact search, nothing to train on
OTHER_SHARE = 0.3  # at most this share of a training sample comes from the other modality
MIN_OTHER_FOR_MIXING = 100  # other-modality vectors that make a single-modality index retrain
HNSW_EF = (16, 32, 64, 128, 256, 512)
# PQ codes rank close neighbours coarsely (recall@10 saturates near 0.45 on clustered data,
# docs/benchmarks.md): fetch this many candidates per query, re-score them with the float vectors.
# The tuner deepens the re-ranking when probing wider no longer helps: text queries, whose
# neighbours score close together, need ~500 candidates at 1M where images need 200.
RERANK_FACTOR = 20
RERANK_FACTORS = (20, 50, 100)
RERANK_MIN = 200

# ids (sorted, unique) -> (the ids found, sorted; their float32 vectors): where exact vectors live.
Lookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Spec:
    """What to build: ``type`` plus its shape parameters."""

    type: str  # flat | hnsw | ivf | ivfpq
    nlist: int = 0
    pq_m: int = 0
    pq_nbits: int = 8
    hnsw_m: int = 32

    @property
    def trained(self) -> bool:
        return self.type in ("ivf", "ivfpq")

    def factory(self) -> str:
        if self.type == "flat":
            return "IDMap2,Flat"
        if self.type == "hnsw":
            return f"IDMap2,HNSW{self.hnsw_m}"
        if self.type == "ivf":
            return f"IVF{self.nlist},Flat"
        if self.type == "ivfpq":
            return f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_nbits}"
        raise ValueError(f"unknown index type {self.type!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factory": self.factory()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        return cls(d["type"], d["nlist"], d["pq_m"], d["pq_nbits"], d["hnsw_m"])


def estimate_bytes(spec: Spec, n: int, dim: int) -> int:
    """Rough resident size of an index of ``n`` vectors (ids included)."""
    if spec.type == "flat":
        return n * (4 * dim + 24)
    if spec.type == "hnsw":
        return n * (4 * dim + 24 + spec.hnsw_m * 2 * 4 + 16)
    coarse = spec.nlist * dim * 4
    if spec.type == "ivf":
        return n * (4 * dim + 8) + coarse
    code = math.ceil(spec.pq_m * spec.pq_nbits / 8)
    return n * (code + 8) + coarse + dim * (1 << spec.pq_nbits) * 4


def nlist_for(n: int) -> int:
    """About 4·√n lists (a power of two), with at least 39 training points per list."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 1 << max(0, round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return min(nlist, 65536)


def _pq_nbits(n: int) -> int:
    return int(max(1, min(8, math.floor(math.log2(max(n, 2) / 39)))))


def _divisors(dim: int) -> list[int]:
    return [m for m in range(1, dim + 1) if dim % m == 0]


def parse_bytes(value: str | int | None) -> int | None:
    """``"2G"``, ``"512MiB"``, ``"1.5GB"`` or a number of bytes."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    s = str(value).strip().upper().replace("IB", "").rstrip("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        return int(float(s))
    except ValueError:
        raise IndexError_(
            f"cannot read {value!r} as a memory size; write it like 512M, 2G or 2147483648"
        ) from None


def updated_settings(
    base: IndexSettings, index_type: str | None, opts: dict[str, Any]
) -> IndexSettings:
    """``base`` with the given options (None keeps a value); refuses an unknown index type."""
    s = IndexSettings(**vars(base))
    if index_type is not None:
        if index_type not in INDEX_TYPES:
            raise IndexError_(
                f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}"
            )
        s.type = index_type
    if opts.get("max_memory") is not None:
        s.max_memory = parse_bytes(opts["max_memory"])
    if opts.get("flat_threshold") is not None:
        s.flat_threshold = int(opts["flat_threshold"])
    if opts.get("recall_target") is not None:
        s.recall_target = float(opts["recall_target"])
    return s


def choose_spec(settings: IndexSettings, n: int, dim: int, budget: int | None = None) -> Spec:
    """The index to build for ``n`` vectors under ``settings`` (``budget``: bytes for this one)."""
    kind = settings.type
    budget = budget if budget is not None else settings.max_memory
    if kind == "auto":
        if budget is not None and estimate_bytes(Spec("flat"), n, dim) > budget:
            kind = "ivfpq"
        elif n < settings.flat_threshold:
            kind = "flat"
        else:
            kind = "ivf"
    if kind in ("ivf", "ivfpq") and n < MIN_TRAIN:
        return Spec("flat")  # nothing to train on yet; exact search is also the fastest here
    if kind == "flat":
        return Spec("flat")
    if kind == "hnsw":
        return Spec("hnsw")
    nlist = nlist_for(n)
    if kind == "ivf":
        return Spec("ivf", nlist=nlist)
    nbits = _pq_nbits(n)
    options = [m for m in _divisors(dim) if m <= max(1, dim // 2) and m * nbits <= 8 * dim]
    default_m = max(m for m in options if m <= max(1, dim // 8))
    if budget is None:
        return Spec("ivfpq", nlist=nlist, pq_m=default_m, pq_nbits=nbits)
    fitting = [
        m for m in options if estimate_bytes(Spec("ivfpq", nlist, m, nbits), n, dim) <= budget
    ]
    if not fitting:
        need = estimate_bytes(Spec("ivfpq", nlist, options[0], nbits), n, dim)
        raise IndexError_(
            f"--max-memory {budget} bytes is too small for {n} vectors of dim {dim}: even the "
            f"smallest IVF-PQ needs about {need} bytes; raise --max-memory"
        )
    return Spec("ivfpq", nlist=nlist, pq_m=max(fitting), pq_nbits=nbits)


# -- searching -----------------------------------------------------------------------------------


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """A C-contiguous float32 (n, dim) copy of ``queries``, L2-normalised."""
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (n, {dim}), not {tuple(np.shape(queries))}")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinite values")
    q = q.copy()
    faiss.normalize_L2(q)
    return q


def search_params(spec: Spec, value: int, k: int, selector: faiss.IDSelector | None = None):
    if spec.trained:
        return faiss.SearchParametersIVF(nprobe=max(1, value), sel=selector)
    if spec.type == "hnsw":  # fewer candidates than k would return fewer than k results
        return faiss.SearchParametersHNSW(efSearch=max(1, value, k), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def max_search_value(spec: Spec, ntotal: int) -> int:
    """The nprobe / efSearch beyond which searching wider finds nothing more."""
    if spec.trained:
        return spec.nlist
    if spec.type == "hnsw":
        return max(16, ntotal)
    return 0


def search(
    index: faiss.Index,
    spec: Spec,
    value: int,
    queries: np.ndarray,
    k: int,
    selector: faiss.IDSelector | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n, k); missing results have id -1."""
    params = search_params(spec, value, k, selector)
    return index.search(queries, k, params=params)


def candidates(spec: Spec, k: int, factor: int = RERANK_FACTOR) -> int:
    """How many hits to ask the index for so that re-ranking can return the true top ``k``."""
    return max(k * factor, RERANK_MIN * factor // RERANK_FACTOR) if spec.type == "ivfpq" else k


def id_lookup(ids: np.ndarray, rows: Callable[[np.ndarray], np.ndarray]) -> Lookup:
    """A ``Lookup`` over ``ids``: ``rows(positions)`` gives the float32 vectors stored at those
    positions of ``ids``; wanted ids that ``ids`` lacks are left out."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def lookup(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
        hit = sorted_ids[pos] == wanted if len(sorted_ids) else np.zeros(len(wanted), bool)
        return wanted[hit], rows(order[pos[hit]])

    return lookup


def array_lookup(ids: np.ndarray, vectors: np.ndarray) -> Lookup:
    """A ``Lookup`` over vectors held in memory (a build's own input)."""
    return id_lookup(ids, lambda at: np.asarray(vectors[at], dtype=np.float32))


def rerank(
    queries: np.ndarray, ids: np.ndarray, lookup: Lookup, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row's candidate ``ids`` by exact inner product with its query;
    candidates the lookup no longer has (deleted since) drop out. (scores, ids), -1 padded."""
    found, vecs = lookup(np.unique(ids[ids >= 0]))
    scores = np.full(ids.shape, -np.inf, np.float32)
    if len(found):
        pos = np.clip(np.searchsorted(found, ids), 0, len(found) - 1)
        valid = (ids >= 0) & (found[pos] == ids)
        exact = np.einsum("qd,qcd->qc", queries, vecs[pos], optimize=True)
        scores = np.where(valid, exact, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(scores, order, axis=1)
    top_i = np.where(np.isfinite(top_s), np.take_along_axis(ids, order, axis=1), -1)
    return top_s, top_i


def search_reranked(
    index: faiss.Index,
    spec: Spec,
    value: int,
    queries: np.ndarray,
    k: int,
    lookup: Lookup | None,
    selector: faiss.IDSelector | None = None,
    factor: int = RERANK_FACTOR,
) -> tuple[np.ndarray, np.ndarray]:
    """``search``, re-ranked with exact vectors when the codes are lossy and ``lookup`` is given
    (``candidates(spec, k, factor)`` of them)."""
    if lookup is None or spec.type != "ivfpq":
        return search(index, spec, value, queries, k, selector)
    _, ids = search(index, spec, value, queries, candidates(spec, k, factor), selector)
    return rerank(queries, ids, lookup, k)


def exact_topk(db: np.ndarray, db_ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top ``k`` by inner product, (n, k) (-1 padded)."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    if len(db):
        _, rows = knn(queries, db, min(k, len(db)), metric=faiss.METRIC_INNER_PRODUCT)
        out[:, : rows.shape[1]] = db_ids[rows]
    return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Share of the exact top ``k`` that ``approx`` found (faiss.contrib's intersection
    measure), a query's own id left out of both."""

    def top(table: np.ndarray, pad: int) -> np.ndarray:
        pairs = zip(table, self_ids, strict=True)
        rows = [[i for i in r if i >= 0 and i != own][:k] for r, own in pairs]
        return np.array([r + [pad] * (k - len(r)) for r in rows], dtype=np.int64).reshape(-1, k)

    truth = top(exact, -2)  # distinct pads: padding never counts as found
    found = int((truth >= 0).sum())
    if found == 0:
        return 1.0
    return knn_intersection_measure(top(approx, -3), truth) * truth.size / found


# -- building ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaissState:
    """An immutable published index of one kind, as of catalog generation ``gen``."""

    kind: str  # "image" | "text"
    index: faiss.Index
    spec: Spec
    gen: int
    value: int = 0  # nprobe (IVF) or efSearch (HNSW); 0 for flat
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def rerank_factor(self) -> int:
        """Re-ranking depth the tuner chose (``candidates``); older checkpoints have the default."""
        return int(self.info.get("rerank_factor", RERANK_FACTOR))

    def contains_any(self, ids: np.ndarray) -> bool:
        if ids.size == 0 or self.ntotal == 0:
            return False
        if hasattr(self.index, "id_map"):
            return bool(np.isin(ids, faiss.vector_to_array(self.index.id_map)).any())
        return True  # conservative

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.spec.type,
            "factory": self.spec.factory(),
            "vectors": self.ntotal,
            "generation": self.gen,
            **({"nprobe": self.value} if self.spec.trained else {}),
            **({"efSearch": self.value} if self.spec.type == "hnsw" else {}),
            **self.info,
        }


def empty_state(kind: str, dim: int, gen: int) -> FaissState:
    index = faiss.index_factory(dim, Spec("flat").factory(), faiss.METRIC_INNER_PRODUCT)
    return FaissState(kind, index, Spec("flat"), gen, 0, {"recall@10": 1.0, "exact": True})


def _new_index(spec: Spec, dim: int) -> faiss.Index:
    index = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = 80
    return index


def probes_needed(n_other: int) -> bool:
    """Whether ``n_other`` vectors of the other modality hold out fewer than ``HELD_OUT``."""
    return n_other // 10 < HELD_OUT


def held_out_other(hold: np.ndarray, probes: np.ndarray | None) -> np.ndarray:
    """The other modality's held-out queries, topped up to ``HELD_OUT`` with ``probes``."""
    if probes is None or len(hold) >= HELD_OUT:
        return hold
    extra = np.asarray(probes, np.float32)[: HELD_OUT - len(hold)]
    return np.concatenate([hold, extra]).astype(np.float32)


@dataclass(frozen=True)
class Tuning:
    """What the tuner chose: the search value, the re-ranking depth, and the recall there."""

    value: int
    factor: int  # candidates = candidates(spec, k, factor); RERANK_FACTOR unless PQ needed more
    by_query: dict[str, float]  # recall@10 of each query modality at (value, factor)
    curve: list[tuple[int, float]]  # (value, worse modality's recall) at ``factor``

    @property
    def recall(self) -> float:
        return min(self.by_query.values())

    def info(self, spec: Spec) -> dict[str, Any]:
        """The checkpoint info entries of this tuning."""
        out: dict[str, Any] = {
            "recall@10": self.recall,
            "recall@10_by_query": self.by_query,
            "tuning": self.curve,
        }
        if spec.type == "ivfpq":
            out["rerank_factor"] = self.factor
            out["rerank"] = f"{candidates(spec, RECALL_K, self.factor)} candidates for k=10"
        return out


def _tune(
    index: faiss.Index,
    spec: Spec,
    queries: np.ndarray,
    truth: np.ndarray,
    self_ids: np.ndarray,
    target: float,
    lookup: Lookup | None = None,
    split: int | None = None,
    kind: str = "image",
) -> Tuning:
    """The smallest nprobe/efSearch at which both query groups (``queries[:split]``, of the
    indexed ``kind``, and the rest, of the other modality) reach ``target`` recall, or where the
    worse one stops rising (re-ranked through ``lookup``, as searches will be). When PQ codes
    saturate below the target, deeper re-ranking (``RERANK_FACTORS``) is tried before settling."""
    split = len(queries) if split is None else split
    other = "text" if kind == "image" else "image"
    groups = {
        name: g
        for name, g in ((kind, slice(0, split)), (other, slice(split, len(queries))))
        if g.stop > g.start
    }
    if spec.trained:
        values = sorted({min(spec.nlist, 1 << i) for i in range(0, 17)})
    else:
        values = list(HNSW_EF)

    def at(factor: int) -> Tuning:
        curve: list[tuple[int, float]] = []
        measured: dict[int, dict[str, float]] = {}
        for v in values:
            _, ids = search_reranked(index, spec, v, queries, truth.shape[1], lookup, factor=factor)
            measured[v] = {
                name: round(recall_at_k(ids[g], truth[g], self_ids[g], RECALL_K), 4)
                for name, g in groups.items()
            }
            curve.append((v, min(measured[v].values())))
            if curve[-1][1] >= target:
                return Tuning(v, factor, measured[v], curve)
            if len(curve) >= 3 and curve[-1][1] - curve[-3][1] < 0.002:
                break  # saturated (quantisation error, not probing, limits it)
        top = max(r for _, r in curve)
        value = next(v for v, r in curve if r >= top - 0.002)
        return Tuning(value, factor, measured[value], curve)

    reranked = spec.type == "ivfpq" and lookup is not None
    best: Tuning | None = None
    for factor in RERANK_FACTORS if reranked else (RERANK_FACTOR,):
        tuning = at(factor)
        if tuning.recall >= target:
            return tuning
        if best is None or tuning.recall > best.recall + 0.002:
            best = tuning
    assert best is not None
    return best


def build_state(
    kind: str,
    spec: Spec,
    dim: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    other: np.ndarray,
    gen: int,
    recall_target: float,
    seed: int = 0,
    probes: np.ndarray | None = None,
) -> FaissState:
    """Build ``spec`` over (``ids``, ``vectors``); ``other``: vectors of the other modality;
    ``probes``: unindexed queries of the other modality held out when ``other`` has too few."""
    t0 = time.perf_counter()
    n = len(ids)
    if spec.type == "flat":
        index = _new_index(spec, dim)
        if n:
            index.add_with_ids(vectors, ids)
        info = {"recall@10": 1.0, "exact": True, "built_vectors": n}
        return FaissState(
            kind, index, spec, gen, 0, {**info, "build_s": round(time.perf_counter() - t0, 3)}
        )

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_hold = min(HELD_OUT, n // 10)
    hold, pool = perm[:n_hold], perm[n_hold:]
    o_perm = rng.permutation(len(other))
    o_hold = min(HELD_OUT, len(other) // 10)
    other_hold, other_pool = other[o_perm[:o_hold]], other[o_perm[o_hold:]]
    other_hold = held_out_other(other_hold, probes)

    index = _new_index(spec, dim)
    trained_on: dict[str, int] = {}
    if spec.trained:
        cap = 256 * max(spec.nlist, 1 << spec.pq_nbits if spec.type == "ivfpq" else 1)
        n_other = min(len(other_pool), int(OTHER_SHARE * min(cap, len(pool) + len(other_pool))))
        n_same = min(len(pool), cap - n_other)
        train = np.concatenate([vectors[pool[:n_same]], other_pool[:n_other]]).astype(np.float32)
        index.train(train)
        trained_on = {"same_modality": int(n_same), "other_modality": int(n_other)}
    if n:
        index.add_with_ids(vectors, ids)

    queries = np.concatenate([vectors[hold], other_hold]).astype(np.float32)
    self_ids = np.concatenate([ids[hold], np.full(len(other_hold), -1, np.int64)])
    info: dict[str, Any] = {"built_vectors": n, "exact": False}
    if trained_on:
        info["trained_on"] = trained_on
    value = 64 if spec.type == "hnsw" else max(1, spec.nlist // 16)
    if len(queries):
        truth = exact_topk(vectors, ids, queries, RECALL_K + 1)
        lookup = array_lookup(ids, vectors)
        tuning = _tune(
            index, spec, queries, truth, self_ids, recall_target, lookup, len(hold), kind
        )
        value = tuning.value
        info.update(tuning.info(spec))
        info["held_out_queries"] = len(queries)
    else:
        info["recall@10"] = None
    if spec.trained:
        index.nprobe = value
    elif spec.type == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = value
    info["build_s"] = round(time.perf_counter() - t0, 3)
    log.info(
        "built %s index %s over %d vectors: %s", kind, spec.factory(), n, info.get("recall@10")
    )
    return FaissState(kind, index, spec, gen, value, info)


def apply_delta(
    state: FaissState, remove: np.ndarray, add_ids: np.ndarray, add_vectors: np.ndarray, gen: int
) -> FaissState | None:
    """``state`` with the catalog's changes applied to its index, in place (no copy: the caller
    excludes searches meanwhile); None when only a rebuild can (HNSW cannot remove vectors)."""
    if remove.size == 0 and add_ids.size == 0:
        return replace(state, gen=gen)
    if remove.size and state.spec.type == "hnsw" and state.contains_any(remove):
        return None
    index = state.index
    if remove.size:
        index.remove_ids(faiss.IDSelectorBatch(remove.astype(np.int64)))
    if add_ids.size:
        index.add_with_ids(
            np.ascontiguousarray(add_vectors, dtype=np.float32), add_ids.astype(np.int64)
        )
    return replace(state, index=index, gen=gen)


# -- checkpoints ---------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _disk_full(directory: Path, e: BaseException) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {directory} is full ({e}): free some space and run again; the "
        "catalog's rows are committed and the FAISS index is rebuilt from them on the next run"
    )


def save_checkpoint(directory: Path, state: FaissState) -> Path:
    """Write ``<kind>.<gen>.faiss`` to a temporary name, then its ``.json`` (with the file's
    SHA-256, so damage is detected), then rename the FAISS file: it is the commit point."""
    faiss_path, info_path = checkpoint_paths(directory, state.kind, state.gen)
    tmp = tmp_name(faiss_path)
    try:
        faiss.write_index(state.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        meta = {
            "kind": state.kind,
            "generation": state.gen,
            "spec": state.spec.to_dict(),
            "value": state.value,
            "vectors": state.ntotal,
            "dim": int(state.index.d),
            "sha256": _file_sha256(tmp),
            "info": state.info,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(info_path, (json.dumps(meta, indent=2) + "\n").encode())
        os.replace(tmp, faiss_path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(directory, e) from e
        if isinstance(e, RuntimeError) and shutil.disk_usage(directory).free < (64 << 20):
            raise _disk_full(directory, e) from e  # FAISS reports a short fwrite this way
        raise
    fsync_dir(directory)
    return faiss_path


def read_checkpoint_info(directory: Path, kind: str, gen: int) -> dict[str, Any]:
    _, info_path = checkpoint_paths(directory, kind, gen)
    return json.loads(info_path.read_text())


def verify_checkpoint(directory: Path, kind: str, gen: int) -> dict[str, Any]:
    """The checkpoint's description, once its FAISS file matches the SHA-256 recorded for it."""
    faiss_path, _ = checkpoint_paths(directory, kind, gen)
    try:
        meta = read_checkpoint_info(directory, kind, gen)
        Spec.from_dict(meta["spec"])
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise IndexFormatError(f"{faiss_path.with_suffix('.json')} is damaged ({e})") from e
    expected = meta.get("sha256")
    if expected is not None and _file_sha256(faiss_path) != expected:
        raise IndexFormatError(f"{faiss_path} is damaged (its SHA-256 differs from when written)")
    return meta


def load_checkpoint(directory: Path, kind: str, gen: int, dim: int) -> FaissState:
    faiss_path, _ = checkpoint_paths(directory, kind, gen)
    meta = verify_checkpoint(directory, kind, gen)
    spec = Spec.from_dict(meta["spec"])
    try:
        index = faiss.read_index(str(faiss_path))
    except RuntimeError as e:
        if not faiss_path.exists():
            raise FileNotFoundError(faiss_path) from e
        raise IndexFormatError(f"{faiss_path} is damaged ({str(e).splitlines()[0]})") from e
    if index.d != dim:
        raise IndexFormatError(f"{faiss_path} holds vectors of dim {index.d}, the index {dim}")
    value = int(meta.get("value", 0))
    if spec.trained:
        index.nprobe = max(1, value)
    elif spec.type == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = max(1, value)
    return FaissState(kind, index, spec, gen, value, dict(meta.get("info", {})))

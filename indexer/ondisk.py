"""IVF-PQ over collections too large to hold: trained on a sample, filled shard by shard, its
inverted lists merged into one file on disk (faiss ``contrib.ondisk.merge_ondisk``).

Peak memory is set by the settings, not by the collection: the training sample
(``train_size`` x dim floats), one part's vectors while its block is encoded, the coarse quantizer
and the ids. Files, inside the index directory::

    ondisk/trained.faiss        the trained, empty IVF-PQ (coarse quantizer + PQ codebooks)
    ondisk/trained.json         its spec and what it was trained on
    ondisk/blocks/<part>.faiss  one part's codes and ids (an in-memory IVF-PQ, small)
    ondisk/images.<gen>.ivfdata the merged inverted lists of checkpoint <gen>
    images.<gen>.faiss          the checkpoint: the index, pointing at that .ivfdata by path

A new generation merges every block into a new ``.ivfdata`` (a sequential write of the codes,
tens of bytes per vector) and never loads the lists into memory; blocks of unchanged parts are
reused. Searches re-rank ``faiss_index.candidates`` hits per query with the float vectors (the
catalog's at search time, the parts' while tuning): PQ codes alone rank close neighbours too
coarsely. Recall@10 is measured, so re-ranked, against exact search on held-out queries,
streamed over the parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from indexer import faiss_index as fx
from indexer.faiss_states import fits
from indexer.layout import IndexSettings, atomic_write_bytes, tmp_name

log = logging.getLogger(__name__)
DIRNAME = "ondisk"
DEFAULT_TRAIN_SIZE = 131_072
MIN_VECTORS = 1_000  # fewer: nothing worth training codebooks on (the catalog's index is used)
EXACT_CHUNK = 65_536  # vectors per step of the exact search


@dataclass(frozen=True)
class Part:
    """A run of vectors (memory-mapped) with their catalog ids; ``key`` names its block."""

    key: str
    vectors: np.ndarray
    ids: np.ndarray


def ondisk_spec(n: int, dim: int) -> fx.Spec:
    """IVF-PQ as ``choose_spec`` would pick it, with 4x fewer lists (k-means on 2 cores is the
    bottleneck; ``faiss_states.fits`` still accepts it, so a reopened index is never rebuilt)."""
    want = fx.choose_spec(IndexSettings(type="ivfpq"), n, dim)
    return fx.Spec("ivfpq", max(1, want.nlist // 4), want.pq_m, want.pq_nbits)


def _sample(
    parts: Sequence[Part], keep: list[np.ndarray], size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` kept vectors (and their ids) drawn uniformly across ``parts``, read in order."""
    counts = np.array([int(k.sum()) for k in keep])
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(size, total), replace=False))
    out, ids, start = (
        [np.zeros((0, parts[0].vectors.shape[1]), np.float32)],
        [np.zeros(0, np.int64)],
        0,
    )
    for part, mask, n in zip(parts, keep, counts, strict=True):
        mine = picks[(picks >= start) & (picks < start + n)] - start
        if mine.size:
            rows = np.flatnonzero(mask)[mine]
            out.append(np.asarray(part.vectors[rows], dtype=np.float32))
            ids.append(part.ids[rows])
        start += n
    return np.concatenate(out), np.concatenate(ids)


def _exact(
    parts: Sequence[Part], keep: list[np.ndarray], queries: np.ndarray, k: int
) -> np.ndarray:
    """Ids of the exact top ``k`` of every query, streamed over the parts."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for part, mask in zip(parts, keep, strict=True):
        for start in range(0, len(part.ids), EXACT_CHUNK):
            sl = slice(start, start + EXACT_CHUNK)
            m = mask[sl]
            if not m.any():
                continue
            vecs = np.asarray(part.vectors[sl][m], dtype=np.float32)
            sims = queries @ vecs.T
            ids = np.broadcast_to(part.ids[sl][m], sims.shape)
            all_s = np.concatenate([best_s, sims], axis=1)
            all_i = np.concatenate([best_i, ids], axis=1)
            top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(all_s, top, axis=1)
            best_i = np.take_along_axis(all_i, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)


def _parts_lookup(parts: Sequence[Part], keep: list[np.ndarray]) -> fx.Lookup:
    """A ``Lookup`` over the kept rows of memory-mapped parts (re-ranking while tuning)."""
    ids = np.concatenate([p.ids[m] for p, m in zip(parts, keep, strict=True)])
    part_of = np.concatenate([np.full(int(m.sum()), j, np.int32) for j, m in enumerate(keep)])
    row_of = np.concatenate([np.flatnonzero(m) for m in keep])

    def rows(at: np.ndarray) -> np.ndarray:
        out = np.empty((len(at), parts[0].vectors.shape[1]), np.float32)
        for j, part in enumerate(parts):
            mine = part_of[at] == j
            if mine.any():
                out[mine] = part.vectors[row_of[at[mine]]]
        return out

    return fx.id_lookup(ids, rows)


def _keep_masks(parts: Sequence[Part], alive: np.ndarray) -> list[np.ndarray]:
    """Per part, which rows to index: ids still ok in the catalog, each id once (its last part
    wins: a file embedded again later replaced its row)."""
    masks = [np.isin(p.ids, alive) for p in parts]
    all_ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
    if len(np.unique(all_ids)) == len(all_ids):
        return masks
    # Keep the last occurrence of every id.
    rev = all_ids[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    last = np.zeros(len(all_ids), bool)
    last[len(all_ids) - 1 - first_in_rev] = True
    start = 0
    for j, p in enumerate(parts):
        masks[j] &= last[start : start + len(p.ids)]
        start += len(p.ids)
    return masks


def _trained(
    root: Path, n: int, dim: int, parts: Sequence[Part], keep: list[np.ndarray],
    other: np.ndarray, train_size: int,
) -> tuple[faiss.Index, fx.Spec, dict[str, Any]]:  # fmt: skip
    """The trained empty index, its spec and what it learnt from: the one on disk while it still
    suits ``n`` vectors (as ``faiss_states.fits`` judges: within 4x of the lists it would
    pick), else trained now (and every block made with the old codebooks is dropped)."""
    index_path, info_path = root / "trained.faiss", root / "trained.json"
    mixed = len(other) >= fx.MIN_OTHER_FOR_MIXING
    want = fx.choose_spec(IndexSettings(type="ivfpq"), n, dim)
    with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError):
        info = json.loads(info_path.read_text())
        have = fx.Spec.from_dict(info["spec"])
        if fits(have, want) and (info["trained_on"]["other_modality"] > 0 or not mixed):
            return faiss.read_index(str(index_path)), have, info
    t0 = time.perf_counter()
    spec = ondisk_spec(n, dim)
    n_other = min(len(other), int(fx.OTHER_SHARE * train_size)) if mixed else 0
    sample, _ = _sample(parts, keep, train_size - n_other, seed=0)
    train = np.concatenate([sample, other[:n_other]]).astype(np.float32)
    index = faiss.index_factory(dim, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    # The factory turns on polysemous training (an annealing of the code order, minutes per
    # million): useless here, since searches never use Hamming filtering.
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    index.train(train)
    info = {
        "spec": spec.to_dict(),
        "trained_on": {"same_modality": len(sample), "other_modality": n_other},
        "train_s": round(time.perf_counter() - t0, 2),
    }
    info_path.unlink(missing_ok=True)  # no stale description of the file written next
    for old in (root / "blocks").glob("*.faiss"):  # codes of the old codebooks are useless
        old.unlink()
    _write_index(index, index_path)
    atomic_write_bytes(info_path, json.dumps(info, indent=2).encode())
    return index, spec, info


def _write_index(index: faiss.Index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _block(trained: faiss.Index, root: Path, part: Part, mask: np.ndarray) -> Path:
    """The block file of ``part`` (its kept rows), made unless one with that many exists."""
    path = root / "blocks" / f"{part.key}.faiss"
    want = int(mask.sum())
    if path.is_file():
        with contextlib.suppress(RuntimeError):
            if faiss.read_index(str(path), faiss.IO_FLAG_MMAP).ntotal == want:
                return path
    block = faiss.clone_index(trained)
    for start in range(0, len(part.ids), EXACT_CHUNK):
        sl = slice(start, start + EXACT_CHUNK)
        m = mask[sl]
        if m.any():
            vecs = np.ascontiguousarray(part.vectors[sl][m], dtype=np.float32)
            block.add_with_ids(vecs, np.ascontiguousarray(part.ids[sl][m]))
    _write_index(block, path)
    return path


def ivfdata_path(directory: Path, gen: int) -> Path:
    return directory / DIRNAME / f"images.{gen}.ivfdata"


def build(
    directory: Path,
    parts: Sequence[Part],
    alive: np.ndarray,
    other: np.ndarray,
    gen: int,
    recall_target: float,
    train_size: int = DEFAULT_TRAIN_SIZE,
    probes: np.ndarray | None = None,
) -> fx.FaissState:
    """The image index of generation ``gen`` over ``parts`` (rows whose id is in ``alive``);
    ``probes``: text queries held out when ``other`` (indexed texts) has too few."""
    t0 = time.perf_counter()
    root = directory / DIRNAME
    keep = _keep_masks(parts, alive)
    n = int(sum(int(k.sum()) for k in keep))
    dim = int(parts[0].vectors.shape[1])
    trained, spec, trained_info = _trained(root, n, dim, parts, keep, other, train_size)
    blocks = [_block(trained, root, p, m) for p, m in zip(parts, keep, strict=True)]
    blocks = [b for b, m in zip(blocks, keep, strict=True) if m.any()]
    index = faiss.clone_index(trained)
    target = ivfdata_path(directory, gen)
    target.unlink(missing_ok=True)  # left by a run killed before its checkpoint
    merge_ondisk(index, [str(b) for b in blocks], str(target))
    filled_s = time.perf_counter() - t0

    # Held-out queries: indexed vectors (their own id is not counted) and the other modality.
    queries, self_ids = _sample(parts, keep, fx.HELD_OUT, seed=1)
    split = len(queries)
    o_hold = other[-min(fx.HELD_OUT, len(other) // 10) :] if len(other) >= 10 else other[:0]
    o_hold = fx.held_out_other(o_hold, probes)
    queries = np.concatenate([queries, o_hold]).astype(np.float32)
    self_ids = np.concatenate([self_ids, np.full(len(o_hold), -1, np.int64)])
    truth = _exact(parts, keep, queries, fx.RECALL_K + 1)
    lookup = _parts_lookup(parts, keep)
    tuning = fx._tune(index, spec, queries, truth, self_ids, recall_target, lookup, split)
    index.nprobe = tuning.value
    info = {
        "exact": False,
        "ondisk": True,
        "built_vectors": n,
        "trained_on": trained_info["trained_on"],
        "train_s": trained_info.get("train_s"),
        **tuning.info(spec),
        "held_out_queries": len(queries),
        "ivfdata": target.name,
        "fill_s": round(filled_s, 2),
        "build_s": round(time.perf_counter() - t0, 2),
    }
    log.info("on-disk %s over %d vectors: recall@10 %.3f at nprobe %d, %s", spec.factory(), n,
             tuning.recall, tuning.value, info["rerank"])  # fmt: skip
    return fx.FaissState("image", index, spec, gen, tuning.value, info)


def remove_stale(directory: Path, keep: str) -> None:
    """Inverted-list files other than ``keep``, the one the newest checkpoint points at (deltas
    applied in place keep using the file of the generation that merged it)."""
    for p in (directory / DIRNAME).glob("images.*.ivfdata"):
        if p.name != keep:
            with contextlib.suppress(OSError):
                p.unlink()

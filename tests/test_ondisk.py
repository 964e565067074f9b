"""IVF-PQ with on-disk inverted lists, built from shards (``indexer.ondisk``, ``from_shards``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import Index
from indexer import faiss_index as fx
from indexer import shards as sh
from indexer.from_shards import index_from_embeddings
from indexer.probes import PROBE_TEXTS
from models.encoder import Encoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SHARD = 5_000  # from 2 shards on, the spec (lists, 8-bit codes) stays: blocks are reused


def _clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    centres = np.random.default_rng(0).standard_normal((24, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write(root: Path, i: int, dim: int) -> np.ndarray:
    vectors = _clustered(np.random.default_rng(10 + i), SHARD, dim)
    rows = {
        "path": [f"/synthetic/{i}/{k}.jpg" for k in range(SHARD)],
        "sha256": [f"{i:032x}{k:032x}" for k in range(SHARD)],
        "size": [1] * SHARD,
        "mtime_ns": [0] * SHARD,
        "width": [8] * SHARD,
        "height": [8] * SHARD,
    }
    sh.write_shard(root, sh.IMAGES, i, vectors, rows)
    return vectors


def test_ondisk_index_from_shards(tmp_path: Path) -> None:
    encoder = Encoder.load("clipsearch-tiny", "none", "cpu")
    src, idx = tmp_path / "emb", tmp_path / "idx"
    sh.open_for_writing(src, encoder.provenance.to_dict(), repr(encoder.preprocess))
    for i in range(2):
        _write(src, i, encoder.dim)
    index_from_embeddings(src, idx, ondisk_threshold=7_500)
    blocks = sorted((idx / "ondisk" / "blocks").iterdir())
    first_ivfdata = sorted((idx / "ondisk").glob("*.ivfdata"))
    assert len(blocks) == 2 and len(first_ivfdata) == 1
    stamps = [b.stat().st_mtime_ns for b in blocks]

    last = _write(src, 2, encoder.dim)
    report = index_from_embeddings(src, idx, ondisk_threshold=7_500)
    assert (report.indexed, report.unchanged) == (SHARD, 2 * SHARD)
    # The new shard got its own block; the others were reused, and the lists merged anew.
    assert [b.stat().st_mtime_ns for b in blocks] == stamps
    assert len(list((idx / "ondisk" / "blocks").iterdir())) == 3
    assert not first_ivfdata[0].exists()

    with Index.open(idx, encoder=encoder) as index:
        d = index.stats()["indexes"]["images"]
        assert d["type"] == "ivfpq" and d["ondisk"] and d["vectors"] == 3 * SHARD
        # Held out: 100 indexed vectors, and the text probes (the catalog has no texts).
        assert d["held_out_queries"] == 100 + len(PROBE_TEXTS) and d["up_to_date"]
        assert set(d["recall@10_by_query"]) == {"image", "text"}
        assert 0.3 < d["recall@10"] <= 1.0  # chance would be ~0.003
        assert d["nprobe"] in [v for v, _ in d["tuning"]]
        hits = index.search_vector(last[7], k=10)
        assert len(hits) == 10 and all(h.path.startswith("/synthetic/") for h in hits)
        # Re-ranking with the catalog's float vectors finds what the 4-byte codes alone miss.
        queries = _clustered(np.random.default_rng(99), 50, encoder.dim)
        truth = fx.exact_topk(*index.catalog.vectors("image")[::-1], queries, 10)
        state = index._faiss.state("image")
        _, coarse = fx.search(state.index, state.spec, state.value, queries, 10)
        fine = np.array([[h.id for h in r] for r in index.search_vectors(queries, k=10)])
        none = np.full(len(queries), -1)
        assert fx.recall_at_k(fine, truth, none, 10) > fx.recall_at_k(coarse, truth, none, 10) + 0.2
        # Scores are exact: the catalog's float vectors re-rank the candidates.
        ids, vectors = index.catalog.vectors("image", [h.id for h in hits])
        exact = dict(zip(ids.tolist(), (vectors @ last[7]).tolist(), strict=True))
        assert [h.score for h in hits] == pytest.approx([exact[h.id] for h in hits], abs=1e-5)
        # A delta on an on-disk index is applied in place (one cannot clone it).
        victim = hits[0].id
        assert index.remove([victim]) == 1
        state = index._faiss.state("image")
        assert state.ntotal == 3 * SHARD - 1
        for h in index.search_vectors(last[:20], k=10):
            assert victim not in {x.id for x in h}
    with Index.open(idx, encoder=encoder) as index:
        state = index._faiss.state("image")
        assert state.ntotal == 3 * SHARD - 1 and state.info["ondisk"]

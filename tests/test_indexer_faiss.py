"""Index choice (auto → flat / IVF / IVF-PQ under a memory budget), training on mixed modalities,
recall@10 against exact search on held-out queries, deltas, and checkpoints."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from test_indexer_support import tiny_encoder, write_images

from indexer import Index, IndexError_
from indexer import faiss_index as fx
from indexer.layout import IndexSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DIM = 32


def _clustered(
    n: int, seed: int, shift: float = 0.0, centres: int = 20, spread: float = 0.35
) -> np.ndarray:
    """Unit vectors around fixed centres (``shift`` moves them: a second "modality")."""
    rng = np.random.default_rng(seed)
    at = np.random.default_rng(99).normal(size=(centres, DIM)) + shift
    x = at[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, DIM))
    x = x.astype(np.float32)
    faiss.normalize_L2(x)
    return x


def test_auto_choice() -> None:
    s = IndexSettings(flat_threshold=1000)
    assert fx.choose_spec(s, 10, DIM).type == "flat"
    assert fx.choose_spec(s, 999, DIM).type == "flat"
    ivf = fx.choose_spec(s, 5000, DIM)
    assert ivf.type == "ivf" and ivf.nlist * 39 <= 5000
    flat_bytes = fx.estimate_bytes(fx.Spec("flat"), 5000, DIM)
    pq = fx.choose_spec(s, 5000, DIM, budget=flat_bytes // 3)
    assert pq.type == "ivfpq"
    assert fx.estimate_bytes(pq, 5000, DIM) <= flat_bytes // 3
    # Explicit types; too few vectors to train stays exact until there are enough.
    assert fx.choose_spec(IndexSettings(type="hnsw"), 10, DIM).type == "hnsw"
    assert fx.choose_spec(IndexSettings(type="ivf"), 100, DIM).type == "flat"
    with pytest.raises(IndexError_, match="max-memory"):
        fx.choose_spec(s, 5000, DIM, budget=1000)
    assert fx.parse_bytes("2G") == 2 << 30 and fx.parse_bytes("512MiB") == 512 << 20
    with pytest.raises(IndexError_):
        fx.parse_bytes("lots")


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_build_tunes_to_the_recall_target_with_mixed_training(kind: str) -> None:
    images = _clustered(2000, seed=1)
    texts = _clustered(800, seed=2, shift=0.8)
    ids = np.arange(1000, 3000, dtype=np.int64)
    spec = fx.choose_spec(IndexSettings(type=kind), len(ids), DIM)
    state = fx.build_state("image", spec, DIM, ids, images, texts, gen=7, recall_target=0.9)
    info = state.info
    assert state.ntotal == 2000 and state.gen == 7
    assert info["held_out_queries"] == 100 + 80  # both modalities query the image index
    assert set(info["recall@10_by_query"]) == {"image", "text"}
    assert 0.9 <= info["recall@10"] <= 1  # PQ too: its candidates are re-ranked exactly
    if spec.trained:
        assert info["trained_on"]["other_modality"] > 0  # text vectors in the sample
        assert state.index.nprobe == state.value
    # The measured recall is what a fresh measurement finds.
    q = texts[:50]
    truth = fx.exact_topk(images, ids, q, 10)
    lookup = fx.array_lookup(ids, images)
    _, got = fx.search_reranked(state.index, spec, state.value, q, 10, lookup)
    assert fx.recall_at_k(got, truth, np.full(50, -1), 10) >= info["recall@10"] - 0.15


def test_text_probes_tune_an_image_only_index_for_text_queries() -> None:
    """Text queries sit off the images (the modality gap): tuned on held-out images alone, the
    index probes too few lists for them; held-out text probes make it probe enough."""
    images = _clustered(4000, seed=5, centres=200, spread=0.6)
    gap = np.random.default_rng(6).normal(size=DIM).astype(np.float32)
    texts = _clustered(300, seed=6, centres=200, spread=0.6) + gap / np.linalg.norm(gap)
    faiss.normalize_L2(texts)
    ids = np.arange(4000, dtype=np.int64)
    spec = fx.Spec("ivf", nlist=64)
    none = images[:0]
    plain = fx.build_state("image", spec, DIM, ids, images, none, 1, 0.95)
    probed = fx.build_state("image", spec, DIM, ids, images, none, 1, 0.95, probes=texts[:100])
    assert set(plain.info["recall@10_by_query"]) == {"image"}
    assert probed.info["held_out_queries"] == fx.HELD_OUT + 100
    assert probed.info["recall@10_by_query"]["text"] >= 0.95 and probed.value > plain.value
    assert probed.info["recall@10"] == min(probed.info["recall@10_by_query"].values())
    # Fresh text queries (not the probes) at each index's tuned nprobe.
    queries = texts[100:]
    truth = fx.exact_topk(images, ids, queries, 10)
    recall = {}
    for name, state in (("plain", plain), ("probed", probed)):
        _, got = fx.search_reranked(state.index, spec, state.value, queries, 10, None)
        recall[name] = fx.recall_at_k(got, truth, np.full(len(queries), -1), 10)
    assert recall["plain"] < 0.85 and recall["probed"] >= 0.93, recall


def test_tuner_reranks_deeper_when_probing_wider_stops_helping() -> None:
    """2-byte codes: text queries' neighbours fall outside the codes' top 200 however wide the
    probe, so the tuner deepens the re-ranking, and searches use the depth it chose."""
    images = _clustered(20000, seed=5, centres=100, spread=0.3)
    gap = np.random.default_rng(6).normal(size=DIM).astype(np.float32)
    texts = _clustered(300, seed=6, centres=100, spread=0.3) + 1.5 * gap / np.linalg.norm(gap)
    faiss.normalize_L2(texts)
    ids = np.arange(20000, dtype=np.int64)
    spec = fx.Spec("ivfpq", nlist=64, pq_m=2, pq_nbits=8)
    none = images[:0]
    state = fx.build_state("image", spec, DIM, ids, images, none, 1, 0.95, probes=texts[:100])
    assert state.rerank_factor > fx.RERANK_FACTOR
    assert state.info["rerank_factor"] == state.rerank_factor
    assert fx.candidates(spec, 10, state.rerank_factor) > fx.candidates(spec, 10) == 200
    assert state.info["recall@10_by_query"]["text"] >= 0.95
    queries = texts[100:]
    truth = fx.exact_topk(images, ids, queries, 10)
    lookup = fx.array_lookup(ids, images)
    recall, value = {}, state.value
    for factor in (fx.RERANK_FACTOR, state.rerank_factor):
        _, got = fx.search_reranked(state.index, spec, value, queries, 10, lookup, None, factor)
        recall[factor] = fx.recall_at_k(got, truth, np.full(len(queries), -1), 10)
    assert recall[state.rerank_factor] >= 0.95
    assert recall[state.rerank_factor] > recall[fx.RERANK_FACTOR] + 0.03, recall


def test_pq_codes_alone_miss_neighbours_that_reranking_finds() -> None:
    images = _clustered(4000, seed=3)
    ids = np.arange(4000, dtype=np.int64) * 3  # not row numbers
    spec = fx.Spec("ivfpq", nlist=32, pq_m=8, pq_nbits=8)  # 8 bytes a vector: coarse codes
    state = fx.build_state("image", spec, DIM, ids, images, images[:0], 1, recall_target=0.95)
    q = _clustered(100, seed=4)
    truth = fx.exact_topk(images, ids, q, 10)
    none = np.full(len(q), -1)
    _, coarse = fx.search(state.index, spec, spec.nlist, q, 10)
    lookup = fx.array_lookup(ids, images)
    scores, fine = fx.search_reranked(state.index, spec, spec.nlist, q, 10, lookup)
    assert fx.recall_at_k(coarse, truth, none, 10) < 0.5
    assert fx.recall_at_k(fine, truth, none, 10) >= 0.95
    # Re-ranked scores are exact inner products, best first.
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, images[fine // 3]), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_rerank_drops_candidates_that_are_gone() -> None:
    vectors = np.eye(4, DIM, dtype=np.float32)
    ids = np.array([10, 20, 30, 40])
    lookup = fx.array_lookup(ids[[0, 2, 3]], vectors[[0, 2, 3]])  # 20 was deleted
    query = vectors[1:2] + vectors[2:3] * 0.5
    scores, got = fx.rerank(query, np.array([[40, 20, 30, -1]]), lookup, 3)
    assert got.tolist() == [[30, 40, -1]]
    assert scores[0, :2].tolist() == [0.5, 0.0] and scores[0, 2] == -np.inf


def test_deltas_and_checkpoints(tmp_path: Path) -> None:
    x = _clustered(600, seed=3)
    ids = np.arange(600, dtype=np.int64)
    for kind in ("flat", "ivf", "hnsw"):
        spec = fx.choose_spec(IndexSettings(type=kind), 500, DIM)
        state = fx.build_state("image", spec, DIM, ids[:500], x[:500], x[:0], 1, 0.9)
        added = fx.apply_delta(state, np.array([], np.int64), ids[500:], x[500:], 2)
        assert added is not None and added.ntotal == 600
        assert added.index is state.index  # in place: a delta never copies the index
        removed = fx.apply_delta(added, ids[:10], np.array([], np.int64), x[:0], 3)
        if kind == "hnsw":
            assert removed is None  # HNSW cannot remove: the caller rebuilds
            continue
        assert removed.ntotal == 590
        fx.save_checkpoint(tmp_path, removed)
        loaded = fx.load_checkpoint(tmp_path, "image", 3, DIM)
        assert loaded.spec == removed.spec and loaded.value == removed.value
        assert loaded.ntotal == 590
        _, a = fx.search(loaded.index, loaded.spec, loaded.value, x[:5], 5)
        _, b = fx.search(removed.index, removed.spec, removed.value, x[:5], 5)
        np.testing.assert_array_equal(a, b)
        for f in tmp_path.iterdir():
            f.unlink()


def test_index_switches_to_ivf_and_reports_recall(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 300, size=32)
    index = Index.create(
        tmp_path / "idx", encoder=tiny_encoder(), workers=0, batch_size=64, flat_threshold=280
    )
    index.add_images([tmp_path / "pics"])
    index.add_texts([f"caption number {i} of a {c}" for i in range(150) for c in ("cat", "dog")])
    stats = index.stats()
    assert stats["index_type"] == "ivf"  # 300 images ≥ threshold 280
    assert stats["indexes"]["texts"]["type"] == "ivf"
    images = stats["indexes"]["images"]  # retrained with text vectors once the texts came
    assert images["recall@10"] >= 0.95 and images["nprobe"] >= 1
    assert images["recall@10_by_query"]["text"] >= 0.9
    assert images["trained_on"]["other_modality"] > 0
    assert stats["recall@10"] == images["recall@10"]
    hits = index.search_text("caption", k=10)
    assert len(hits) == 10
    # A selective path prefix still finds its match (probing widens when results run short).
    few = index.search_text("caption", k=50, path_prefix=str(tmp_path / "pics" / "img_0007.png"))
    assert [Path(h.path).name for h in few] == ["img_0007.png"]
    # Incremental changes go through deltas on the IVF index, not a retrain.
    build_s = index._faiss.state("image").info["build_s"]
    index.remove([hits[0].id])
    assert index._faiss.state("image").spec.type == "ivf"
    assert index._faiss.state("image").info["build_s"] == build_s
    assert index.stats()["images"] == 299
    # Switching type is a rebuild from the catalog's vectors, with the same ids.
    ids = sorted(h.id for h in index.search_text("caption", k=400))
    index.close()
    again = Index.open_or_create(tmp_path / "idx", encoder=tiny_encoder(), index_type="hnsw")
    assert again.stats()["index_type"] == "hnsw"
    assert sorted(h.id for h in again.search_text("caption", k=400)) == ids
    assert again.stats()["indexes"]["images"]["recall@10"] is not None
    again.close()


def test_max_memory_picks_ivfpq(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 300, size=32)
    flat = fx.estimate_bytes(fx.Spec("flat"), 300, DIM)
    index = Index.create(
        tmp_path / "idx", encoder=tiny_encoder(), workers=0, batch_size=64, max_memory=flat // 2
    )
    index.add_images([tmp_path / "pics"])
    stats = index.stats()
    assert stats["index_type"] == "ivfpq"
    assert stats["index_settings"]["max_memory"] == flat // 2
    assert 0 < stats["recall@10"] <= 1
    assert len(index.search_text("anything", k=5)) == 5
    index.close()

"""Searches from many threads while an add, a remove or a rebuild runs (same process), and a
reader in another ``Index`` picking up a writer's commits with ``reload_if_changed``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from test_indexer_support import tiny_encoder, write_images

from indexer import Index

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _check(hits, k: int, paths: set[str]) -> None:
    assert len(hits) <= k
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.id for h in hits}) == len(hits)  # never the same item twice
    for h in hits:
        assert h.kind == "image" and h.path in paths
        assert -1.0001 <= h.score <= 1.0001


def test_search_from_threads_during_add_remove_rebuild(tmp_path: Path) -> None:
    first = write_images(tmp_path / "pics" / "first", 40)
    later = write_images(tmp_path / "pics" / "later", 60, start=40)
    all_paths = {str(p) for p in first + later}
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0, batch_size=8)
    index.add_images([tmp_path / "pics" / "first"])
    query = index.encoder.encode_texts(["a red circle"])[0]

    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"searches": 0}
    seen_sizes: set[int] = set()

    def reader(n: int) -> None:
        rng = np.random.default_rng(n)
        try:
            while not stop.is_set():
                k = int(rng.integers(1, 30))
                if n % 3 == 0:
                    hits = index.search_text("a blue square", k=k)
                elif n % 3 == 1:
                    hits = index.search_vector(query, k=k)
                else:
                    hits = index.search_vectors(rng.normal(size=(4, index.dim)), k=k)[0]
                _check(hits, k, all_paths)
                seen_sizes.add(index._faiss.state("image").ntotal)
                for h in hits[:3]:
                    got = index.get(h.id)
                    assert got is None or got.path == h.path
                counts["searches"] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        # Two decode workers; with reader threads alive they come from a fork server.
        report = index.add_images([tmp_path / "pics" / "later"], workers=2)
        assert report.embedded == 60
        removed_ids = [h.id for h in index.search_text("x", k=100)[:10]]
        assert index.remove(removed_ids) == 10
        index.rebuild()
        assert index.add_images([tmp_path / "pics"]).indexed == 10  # removed files come back
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert counts["searches"] > 20
    assert {40, 100} <= seen_sizes  # readers saw the old index and the new one
    final = {h.path for h in index.search_text("x", k=200)}
    assert final == all_paths
    index.close()


def test_reader_picks_up_another_writers_commits(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    write_images(pics, 10)
    writer = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0)
    writer.add_images([pics])
    reader = Index.open(tmp_path / "idx", encoder=tiny_encoder())
    assert reader.reload_if_changed() is False
    assert len(reader.search_text("x", k=50)) == 10

    new = write_images(pics, 5, start=10)
    writer.add_images([pics])
    writer.add_texts(["a caption", "another caption"])
    assert reader.reload_if_changed() is True
    assert reader.reload_if_changed() is False
    paths = {h.path for h in reader.search_text("x", k=50)}
    assert len(paths) == 15 and {str(p) for p in new} <= paths
    assert len(reader.search_text("x", k=50, target="texts")) == 2

    # Removals and renames done by the writer reach the reader too.
    victim = new[0]
    victim.unlink()
    (pics / "img_0011.png").rename(pics / "renamed.png")
    writer.add_images([pics])
    assert reader.reload_if_changed() is True
    paths = {h.path for h in reader.search_text("x", k=50)}
    assert str(victim) not in paths and str(pics / "renamed.png") in paths
    assert len(paths) == 14
    assert reader.stats()["images"] == 14
    writer.close()
    reader.close()

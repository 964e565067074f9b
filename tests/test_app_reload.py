"""The server picks up index changes made elsewhere, without a restart and without torn reads."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient
from synthetic import draw
from test_app_support import build_index, is_error, settings_for, tiny_encoder

from app.main import create_app
from indexer import Index


def wait_for(predicate, timeout: float = 15.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def add_pictures(root, names):
    folder = root / "more"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / f"{name}.png"
        draw(("circle", "square", "triangle", "cross")[i % 4], "white", "black", 72).save(path)
        paths.append(path)
    return paths


def test_hot_reload_after_an_add_by_another_writer(tmp_path):
    built = build_index(tmp_path, n=8)
    directory = built.directory
    settings = settings_for(directory, reload_interval_s=0.2)
    built.close()

    with TestClient(create_app(settings)) as c:  # the service opens the directory itself
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/index").json()["stats"]["images"] == 8

        # Another writer (the indexer CLI, another replica) adds images.
        writer = Index.open(directory, encoder=tiny_encoder())
        new = add_pictures(tmp_path, ["late_0", "late_1"])
        writer.add_images(new)
        writer.close()

        def top_hit() -> str:
            r = c.post("/v1/search/image", files={"file": ("q.png", new[1].read_bytes())})
            return r.json()["hits"][0]["path"]

        wait_for(lambda: top_hit() == str(new[1]))
        assert c.get("/v1/index").json()["stats"]["images"] == 10
        assert 'clipsearch_index_items{kind="images"} 10.0' in c.get("/metrics").text
        assert "clipsearch_index_reloads_total 1.0" in c.get("/metrics").text


def test_no_torn_reads_while_another_writer_adds_and_removes(tmp_path):
    built = build_index(tmp_path, n=8)
    directory = built.directory
    settings = settings_for(directory, reload_interval_s=0.05)
    built.close()
    errors: list[str] = []
    stop = threading.Event()

    with TestClient(create_app(settings)) as c:

        def reader():
            while not stop.is_set():
                r = c.post("/v1/search/text", json={"query": "a shape", "k": 20})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                hits = r.json()["hits"]
                ids = [h["id"] for h in hits]
                if len(ids) != len(set(ids)) or any(not h["path"] for h in hits):
                    errors.append(f"inconsistent hits {ids}")

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        writer = Index.open(directory, encoder=tiny_encoder())
        try:
            for round_ in range(4):
                paths = add_pictures(tmp_path, [f"r{round_}_{i}" for i in range(3)])
                report = writer.add_images(paths)
                time.sleep(0.1)
                writer.remove(report.ids[:2])
                time.sleep(0.1)
        finally:
            writer.close()
            stop.set()
            for t in readers:
                t.join()
        assert not errors, errors[:3]

        def served() -> int:  # the rounds' pictures are byte-identical: one hit lists the rest
            r = c.post("/v1/search/text", json={"query": "a shape", "k": 50})
            return sum(1 + len(h["duplicates"]) for h in r.json()["hits"])

        wait_for(lambda: served() == 8 + 4)


def test_serves_once_the_index_appears(tmp_path):
    directory = tmp_path / "index"
    directory.mkdir()
    settings = settings_for(directory, reload_interval_s=0.2)

    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "no index" in r.json()["detail"]
        err = is_error(c.post("/v1/search/text", json={"query": "red"}), 503, "not_ready")
        assert "not loaded" in err["detail"]
        assert c.get("/healthz").status_code == 200

        index = Index.create(directory, encoder=tiny_encoder(), workers=0)
        add = add_pictures(tmp_path, ["first"])
        index.add_images(add)
        index.close()

        wait_for(lambda: c.get("/readyz").status_code == 200)
        hits = c.post("/v1/search/text", json={"query": "red"}).json()["hits"]
        assert [h["path"] for h in hits] == [str(add[0])]


def test_faiss_batches_use_blas_while_serving_and_the_default_is_put_back(tmp_path):
    import faiss

    index = build_index(tmp_path, n=2, texts=False)
    before = faiss.cvar.distance_compute_blas_threshold
    try:
        with TestClient(create_app(settings_for(index.directory), index=index)) as c:
            assert faiss.cvar.distance_compute_blas_threshold == 4 * index.dim
            assert c.post("/v1/search/text", json={"query": "x"}).status_code == 200
        assert faiss.cvar.distance_compute_blas_threshold == before
    finally:
        index.close()

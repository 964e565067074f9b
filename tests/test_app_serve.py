"""A real ``clipsearch serve`` process on a free port, queried over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from synthetic import draw
from test_app_support import API_KEY, build_index, free_port, png_bytes, tiny_encoder, wait_ready

from indexer import Index

ROOT = Path(__file__).resolve().parents[1]


def clipsearch(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    index = build_index(root, n=12)
    directory = index.directory
    index.close()
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - held for the module's lifetime
    proc = clipsearch(
        "serve",
        "--index",
        str(directory),
        "--port",
        str(port),
        "--reload-interval",
        "0.2",
        env={"CLIPSEARCH_API_KEY": API_KEY, "CLIPSEARCH_BATCH_WINDOW_MS": "20"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=120)
    except TimeoutError:
        proc.kill()
        raise AssertionError((root / "server.log").read_text()[-3000:]) from None
    yield {
        "base": base,
        "proc": proc,
        "root": root,
        "directory": directory,
        "log": root / "server.log",
    }
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_search_and_images_over_http(server):
    base = server["base"]
    r = httpx.post(f"{base}/v1/search/text", json={"query": "a red circle", "k": 4})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 4
    assert hits[0]["url"].startswith(base)
    image = httpx.get(hits[0]["url"])
    assert image.status_code == 200 and image.content == Path(hits[0]["path"]).read_bytes()
    assert httpx.get(hits[0]["thumbnail_url"]).headers["content-type"] == "image/jpeg"
    assert httpx.get(f"{base}/").status_code == 200
    assert httpx.get(f"{base}/v1/index").json()["stats"]["images"] == 12


def test_concurrent_queries_over_http_are_batched(server):
    base = server["base"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/search/text", json={"query": f"query {i}", "k": 3})
                    for i in range(32)
                )
            )

    def batches() -> float:
        for line in httpx.get(f"{base}/metrics").text.splitlines():
            if line.startswith("clipsearch_text_batch_size_count"):
                return float(line.split()[-1])
        return 0.0

    before = batches()
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert batches() - before < 32


def test_hot_reload_of_another_process_write(server):
    base = server["base"]
    folder = server["root"] / "later"
    folder.mkdir()
    path = folder / "late.png"
    draw("cross", "yellow", "purple", 80).save(path)
    writer = Index.open(server["directory"], encoder=tiny_encoder())
    writer.add_images([path])
    writer.close()

    deadline = time.monotonic() + 20
    found = False
    while time.monotonic() < deadline and not found:
        r = httpx.post(f"{base}/v1/search/image", files={"file": ("q.png", path.read_bytes())})
        found = r.json()["hits"][0]["path"] == str(path)
        time.sleep(0.1)
    assert found, "the server did not pick up the new image"


def test_add_over_http_needs_the_key_from_the_environment(server):
    base = server["base"]
    files = [("files", ("up.png", png_bytes("triangle", "orange", "green", 70), "image/png"))]
    assert httpx.post(f"{base}/v1/images", files=files).status_code == 401
    r = httpx.post(f"{base}/v1/images", files=files, headers={"X-API-Key": API_KEY})
    assert r.status_code == 201, r.text
    new_id = r.json()["added"][0]["id"]
    assert httpx.get(f"{base}/v1/images/{new_id}").status_code == 200


def test_clean_shutdown_on_sigterm(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    # uvicorn finishes the lifespan, then re-raises the signal so the parent sees why it ended.
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert b"Application shutdown complete" in server["log"].read_bytes()
    assert b"Traceback" not in server["log"].read_bytes()


def test_serve_refuses_a_missing_directory(tmp_path):
    proc = clipsearch(
        "serve", "--index", str(tmp_path / "nope"), stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"not a directory" in err

"""Hostile requests the service must survive: decode floods, odd methods, foreign origins, ids
outside int64, loosely typed numbers, a damaged catalog. Never a 500, never unbounded memory."""

from __future__ import annotations

import io
import json
import random
import shutil
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_app_support import API_KEY, app_for, build_index, is_error, png_bytes, settings_for
from test_indexer_support import garble_catalog_pages

from app.main import create_app

WRITE = {"X-API-Key": API_KEY}
BIG = 2**63  # one past the largest signed 64-bit id


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build_index(tmp_path_factory.mktemp("hardening"), n=8)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def client(index):
    with TestClient(app_for(index)) as c:
        yield c


# -- decode limits ---------------------------------------------------------------------------


def test_pixels_per_request_are_capped(index) -> None:
    files = [("files", (f"{i}.png", png_bytes(size=64), "image/png")) for i in range(3)]
    with TestClient(app_for(index, max_request_pixels=2 * 64 * 64)) as c:
        assert c.post("/v1/embed/image", files=files[:2]).status_code == 200
        body = is_error(c.post("/v1/embed/image", files=files), 413, "too_many_pixels")
        assert "CLIPSEARCH_MAX_REQUEST_PIXELS" in body["detail"]


def test_decodes_beyond_the_queue_are_refused_with_429(index, monkeypatch) -> None:
    import app.routes.common

    real = app.routes.common.decode_image
    entered = threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(app.routes.common, "decode_image", slow)
    upload = [("file", ("q.png", png_bytes(), "image/png"))]
    app = app_for(index, max_concurrent_decodes=1, max_queued_decodes=0)
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/v1/search/image", files=upload)
        assert entered.wait(30)
        body = is_error(c.post("/v1/search/image", files=upload), 429, "busy")
        assert first.result().status_code == 200
    assert "retry" in body["detail"].lower()


# -- metrics, CORS ---------------------------------------------------------------------------


def test_metrics_labels_stay_bounded(client) -> None:
    rng = random.Random(0)
    for _ in range(60):
        method = "".join(rng.choices(string.ascii_uppercase, k=8))
        client.request(method, f"/v1/{rng.randrange(10**9)}")
    text = client.get("/metrics").text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("clipsearch_http_requests_total{")
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


def test_cors_is_off_by_default(client) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"}
    r = client.options("/v1/images/1", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/index", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allow_list(index) -> None:
    with TestClient(app_for(index, cors_origins=["https://photos.example"])) as c:
        ok = {"Origin": "https://photos.example", "Access-Control-Request-Method": "POST"}
        r = c.options("/v1/search/text", headers=ok)
        assert r.headers["access-control-allow-origin"] == "https://photos.example"
        evil = {**ok, "Origin": "http://evil.example"}
        assert (
            "access-control-allow-origin" not in c.options("/v1/search/text", headers=evil).headers
        )


# -- ids, numbers ----------------------------------------------------------------------------


def test_ids_outside_int64_are_4xx_everywhere(client) -> None:
    responses = [
        client.get(f"/v1/images/{BIG}"),
        client.get(f"/v1/images/{BIG}/thumbnail"),
        client.get(f"/v1/images/{-BIG - 1}"),
        client.delete(f"/v1/images/{BIG}", headers=WRITE),
        client.post("/v1/search/image", json={"image_id": BIG}),
        client.post("/metadata", content=json.dumps({"ids": [BIG, 1]})),
        client.post("/knn-service", content=json.dumps({"image_url": f"http://x/v1/images/{BIG}"})),
    ]
    for r in responses:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)


@pytest.mark.parametrize("k", ["5", True, 2.0, 2.5, None])
def test_k_must_be_a_json_integer(client, k) -> None:
    r = client.post("/v1/search/text", json={"query": "a red circle", "k": k})
    is_error(r, 422)


def test_knn_with_no_results_asked_returns_none(client) -> None:
    for field in ("num_images", "num_result_ids"):
        r = client.post("/knn-service", content=json.dumps({"text": "a red circle", field: 0}))
        assert r.status_code == 200 and r.json() == [], r.text


# -- a damaged catalog -----------------------------------------------------------------------


def test_a_damaged_catalog_makes_readyz_503_with_the_reason(index, tmp_path: Path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(index.directory, copy, ignore=shutil.ignore_patterns("write.lock"))
    garble_catalog_pages(copy / "catalog.sqlite3")
    with TestClient(create_app(settings_for(copy, reload_interval_s=0))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "damaged" in r.json()["detail"], r.text
        is_error(c.post("/v1/search/text", json={"query": "a red circle"}), 503)


# -- memory of the served process ------------------------------------------------------------


def _bomb_png(mode: str) -> bytes:
    """A 6000x6600 (39.6 Mpx, under the per-image cap) PNG of one colour: a few KB to 115 KB."""
    buf = io.BytesIO()
    Image.new(mode, (6000, 6600), 0 if mode == "1" else (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_decode_floods_add_under_500_mb_to_the_served_process(index, tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx
    from test_app_support import free_port, wait_ready

    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "index"
    shutil.copytree(index.directory, copy, ignore=shutil.ignore_patterns("write.lock"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--index", str(copy), "--port", str(port)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=120)
        small = {"file": ("q.png", png_bytes(), "image/png")}
        assert httpx.post(f"{base}/v1/search/image", files=small, timeout=60).status_code == 200
        before = _kib(server.pid, "VmRSS")
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on

        one_bit = _bomb_png("1")
        files = [("files", (f"{i}.png", one_bit, "image/png")) for i in range(32)]
        r = httpx.post(f"{base}/v1/embed/image", files=files, timeout=120)
        assert r.status_code in (200, 413), r.text

        rgb = _bomb_png("RGB")

        def search(_: int) -> int:
            files = {"file": ("big.png", rgb, "image/png")}
            return httpx.post(f"{base}/v1/search/image", files=files, timeout=300).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(search, range(16)))
        assert set(statuses) <= {200, 429}, statuses
        assert 200 in statuses
        added_mb = (_kib(server.pid, "VmHWM") - before) / 1024
        print(f"peak RSS added by both floods: {added_mb:.0f} MB")  # shown with -s
        assert added_mb < 500, f"peak RSS grew by {added_mb:.0f} MB"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_openapi_states_the_limits(client, index) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    text = schemas["TextSearchRequest"]["properties"]
    assert text["k"]["maximum"] == 50 and text["query"]["maxLength"] == 1000
    vector = schemas["VectorSearchRequest"]["properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == index.dim
    assert schemas["EmbedTextRequest"]["properties"]["texts"]["maxItems"] == 64

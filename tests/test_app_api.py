"""Every /v1 endpoint, the page, docs, health and metrics, through TestClient on a real index."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_app_support import (
    API_KEY,
    TEXTS,
    app_for,
    build_index,
    image_of,
    is_error,
    jpeg_bytes,
    png_bytes,
)

WRITE = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build_index(tmp_path_factory.mktemp("api"))
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def client(index):
    with TestClient(app_for(index, batch_window_ms=20)) as c:
        yield c


def first_image(index):
    return index.search_text("anything", k=1)[0]


def test_text_search_returns_ranked_image_hits_with_urls(client, index):
    r = client.post("/v1/search/text", json={"query": "a red circle", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert body["target"] == "images" and len(hits) == 5
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = index.search_text("a red circle", k=5)
    assert [h["id"] for h in hits] == [h.id for h in expected]
    for h in hits:
        assert h["kind"] == "image" and h["path"].endswith(".png")
        assert h["url"].endswith(f"/v1/images/{h['id']}")
        assert h["thumbnail_url"].endswith(f"/v1/images/{h['id']}/thumbnail")
        assert h["width"] == 64 and h["height"] == 64


def test_text_search_of_texts_and_path_filter(client, index):
    r = client.post("/v1/search/text", json={"query": "red", "k": 10, "target": "texts"})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert {h["text"] for h in hits} == set(TEXTS)
    assert all(h["kind"] == "text" and h["url"] is None for h in hits)

    some = first_image(index).path
    r = client.post(
        "/v1/search/text", json={"query": "red", "k": 10, "filter": {"path_prefix": some}}
    )
    assert [h["path"] for h in r.json()["hits"]] == [some]


def test_concurrent_text_queries_are_batched(client):
    before = client.get("/metrics").text

    def query(i):
        return client.post("/v1/search/text", json={"query": f"shape number {i}", "k": 3})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(query, range(48)))
    assert all(r.status_code == 200 for r in responses)
    # Each query got its own answer, not a neighbour's.
    assert len({tuple(h["id"] for h in r.json()["hits"]) for r in responses}) > 1
    after = client.get("/metrics").text
    assert (
        _sample(after, "clipsearch_text_batch_size_count")
        - _sample(before, "clipsearch_text_batch_size_count")
        < 48
    ), "48 concurrent queries should share encoder calls"


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_image_search_by_upload_base64_and_id(client, index):
    target = first_image(index)
    data = Path(target.path).read_bytes()
    r = client.post(
        "/v1/search/image", files={"file": ("q.png", data, "image/png")}, data={"k": "3"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == target.id
    assert r.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    b64 = base64.b64encode(data).decode()
    r = client.post("/v1/search/image", json={"image": f"data:image/png;base64,{b64}", "k": 2})
    assert r.json()["hits"][0]["id"] == target.id

    # "More like this" of an indexed image leaves that image out of its look-alikes.
    r = client.post("/v1/search/image", json={"image_id": target.id, "k": 2})
    assert len(r.json()["hits"]) == 2 and target.id not in {h["id"] for h in r.json()["hits"]}

    r = client.post(
        "/v1/search/image",
        files={"file": ("q.jpg", jpeg_bytes(), "image/jpeg")},
        data={"k": "4", "target": "texts"},
    )
    assert r.status_code == 200
    assert len(r.json()["hits"]) == 4 and r.json()["hits"][0]["kind"] == "text"


def test_vector_search_matches_the_library(client, index):
    vec = index.encoder.encode_texts(["a blue square"])[0]
    r = client.post("/v1/search/vector", json={"vector": (vec * 3.0).tolist(), "k": 4})
    assert r.status_code == 200
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in index.search_vector(vec, k=4)]


def test_embed_text_and_images_in_the_index_space(client, index):
    r = client.post("/v1/embed/text", json={"texts": ["a red circle", "a blue square"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "clipsearch-tiny" and body["dim"] == index.dim
    got = np.asarray(body["embeddings"], np.float32)
    want = index.encoder.encode_texts(["a red circle", "a blue square"])
    np.testing.assert_allclose(got, want, atol=1e-5)

    files = [
        ("files", ("a.png", png_bytes(), "image/png")),
        ("files", ("b.jpg", jpeg_bytes(), "image/jpeg")),
    ]
    r = client.post("/v1/embed/image", files=files)
    assert r.status_code == 200, r.text
    vectors = np.asarray(r.json()["embeddings"])
    assert vectors.shape == (2, index.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    r = client.post("/v1/embed/image", json={"images": [base64.b64encode(png_bytes()).decode()]})
    np.testing.assert_allclose(r.json()["embeddings"][0], vectors[0], atol=1e-5)


def test_original_and_cached_thumbnail_by_id(client, index):
    hit = first_image(index)
    r = client.get(f"/v1/images/{hit.id}")
    assert r.status_code == 200
    assert r.content == Path(hit.path).read_bytes()
    assert r.headers["content-type"] == "image/png"

    r = client.get(f"/v1/images/{hit.id}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert image_of(r.content).format == "JPEG"
    etag = r.headers["etag"]
    again = client.get(f"/v1/images/{hit.id}/thumbnail", headers={"If-None-Match": etag})
    assert again.status_code == 304
    cache = client.app.state.thumbnails
    assert cache.hits >= 1


def test_thumbnail_is_bounded_by_the_setting(tmp_path):
    index = build_index(tmp_path, n=2, texts=False)
    try:
        hit = index.search_text("x", k=1)[0]
        with TestClient(app_for(index, thumbnail_size=32)) as c:
            data = c.get(f"/v1/images/{hit.id}/thumbnail").content
        assert max(image_of(data).size) == 32
    finally:
        index.close()


def test_upload_then_delete_an_image(client, index):
    data = png_bytes("cross", "white", "purple", size=80)
    r = client.post("/v1/images", files=[("files", ("new.png", data, "image/png"))], headers=WRITE)
    assert r.status_code == 201, r.text
    added = r.json()["added"]
    assert len(added) == 1 and r.json()["report"]["indexed"] == 1
    new_id = added[0]["id"]
    assert added[0]["width"] == 80
    assert client.get(f"/v1/images/{new_id}").content == data

    # Searchable at once: its own pixels find it first.
    r = client.post("/v1/search/image", files={"file": ("q.png", data, "image/png")})
    assert r.json()["hits"][0]["id"] == new_id

    # Re-uploading the same bytes is idempotent and still reports the item.
    b64 = base64.b64encode(data).decode()
    r = client.post("/v1/images", json={"images": [b64]}, headers=WRITE)
    assert r.status_code == 201 and r.json()["added"][0]["id"] == new_id

    r = client.delete(f"/v1/images/{new_id}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json() == {"id": new_id, "removed": True}
    is_error(client.get(f"/v1/images/{new_id}"), 404)
    is_error(client.delete(f"/v1/images/{new_id}", headers=WRITE), 404)


def test_index_info_health_and_readiness(client, index):
    r = client.get("/v1/index")
    assert r.status_code == 200
    info = r.json()
    assert info["stats"]["images"] == index.stats()["images"]
    assert info["stats"]["texts"] == len(TEXTS)
    assert info["provenance"]["model"] == "clipsearch-tiny"
    assert info["provenance"]["dim"] == index.dim
    assert info["service"]["writes_enabled"] is True
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"


def test_metrics_cover_routes_encode_search_and_index_size(client):
    client.post("/v1/search/text", json={"query": "metrics please"})
    text = client.get("/metrics").text
    assert (
        'clipsearch_http_requests_total{method="POST",route="/v1/search/text",status="200"}' in text
    )
    assert (
        'clipsearch_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/v1/search/text"}'
        in text
    )
    assert 'clipsearch_encode_seconds_count{modality="text"}' in text
    assert 'clipsearch_search_seconds_count{target="images"}' in text
    assert 'clipsearch_index_items{kind="images"}' in text
    # Raw ids never become labels.
    client.get("/v1/images/1/thumbnail")
    assert 'route="/v1/images/{image_id}/thumbnail"' in client.get("/metrics").text


def test_page_static_files_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    openapi = client.get("/openapi.json")
    paths = openapi.json()["paths"]
    refs = set(re.findall(r"#/components/schemas/(\w+)", openapi.text))
    assert refs <= set(openapi.json()["components"]["schemas"]), "dangling $ref"
    for path in (
        "/v1/search/text",
        "/v1/search/image",
        "/v1/search/vector",
        "/v1/embed/text",
        "/v1/embed/image",
        "/v1/images",
        "/v1/images/{image_id}",
        "/v1/images/{image_id}/thumbnail",
        "/v1/index",
        "/healthz",
        "/readyz",
        "/metrics",
        "/knn-service",
        "/metadata",
        "/indices-list",
    ):
        assert path in paths, path


def test_cors_for_allowed_origins(index):
    with TestClient(app_for(index, cors_origins=["http://elsewhere.example"])) as c:
        r = c.options(
            "/v1/search/text",
            headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
        )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_read_key_guards_reads_but_not_health(index):
    app = app_for(index, read_key="reader")
    with TestClient(app) as c:
        body = {"query": "a red circle"}
        is_error(c.post("/v1/search/text", json=body), 401, "missing_key")
        is_error(c.post("/v1/search/text", json=body, headers={"X-API-Key": "nope"}), 403)
        assert (
            c.post("/v1/search/text", json=body, headers={"X-API-Key": "reader"}).status_code == 200
        )
        assert c.post("/v1/search/text", json=body, headers=WRITE).status_code == 200
        is_error(c.get("/v1/images/1"), 401)
        assert c.get("/v1/images/1", headers={"Authorization": "Bearer reader"}).status_code == 200
        # The read key cannot write.
        is_error(c.delete("/v1/images/1", headers={"X-API-Key": "reader"}), 403, "wrong_key")
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_writes_are_off_without_an_api_key(index):
    with TestClient(app_for(index, api_key=None)) as c:
        body = is_error(
            c.post("/v1/images", files=[("files", ("a.png", png_bytes(), "image/png"))]),
            403,
            "writes_disabled",
        )
        assert "CLIPSEARCH_API_KEY" in body["detail"]
        assert c.get("/v1/index").json()["service"]["writes_enabled"] is False

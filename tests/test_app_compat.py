"""clip-retrieval's clip back endpoints, called the way ClipClient and clip-front call them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_app_support import app_for, build_index, is_error


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build_index(tmp_path_factory.mktemp("compat"), n=10)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def client(index):
    with TestClient(app_for(index, max_k=30)) as c:
        yield c


def clip_client_body(**query) -> bytes:
    """Exactly what ``ClipClient.query`` posts (``data=json.dumps(...)``, no Content-Type)."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "clipsearch",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 5,
        "num_result_ids": 5,
    }
    body.update(query)
    return json.dumps(body).encode()


def knn(client, body: bytes, content_type: str | None = None):
    headers = {"content-type": content_type} if content_type else {}
    return client.post("/knn-service", content=body, headers=headers)


def test_indices_list(client):
    r = client.get("/indices-list")
    assert r.status_code == 200 and r.json() == ["clipsearch"]


def test_text_query_from_clip_client_without_content_type(client, index):
    r = knn(client, clip_client_body(text="a red circle"))
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(results) == 5
    expected = index.search_text("a red circle", k=5)
    assert [x["id"] for x in results] == [h.id for h in expected]
    for row, hit in zip(results, expected, strict=True):
        assert row["similarity"] == pytest.approx(hit.score, abs=1e-5)
        assert row["url"].endswith(f"/v1/images/{hit.id}")
        assert row["caption"] == hit.path.rsplit("/", 1)[-1]
        assert client.get(row["url"]).status_code == 200


def test_clip_front_sends_text_plain(client):
    body = json.dumps(
        {"text": "blue", "modality": "image", "num_images": 3, "indice_name": "clipsearch"}
    ).encode()
    r = knn(client, body, "text/plain;charset=UTF-8")
    assert r.status_code == 200 and len(r.json()) == 3


def test_image_base64_image_url_and_embedding_queries(client, index):
    hit = index.search_text("x", k=1)[0]
    data = Path(hit.path).read_bytes()
    r = knn(client, clip_client_body(image=base64.b64encode(data).decode()))
    assert r.json()[0]["id"] == hit.id

    # clip-front's "search by this image" sends the result's own url back.
    url = client.get(f"/v1/images/{hit.id}").url
    r = knn(client, clip_client_body(image_url=str(url)))
    assert r.status_code == 200 and r.json()[0]["id"] == hit.id

    vector = index.encoder.encode_texts(["a green square"])[0].tolist()
    r = knn(client, clip_client_body(embedding_input=vector))
    assert [x["id"] for x in r.json()] == [h.id for h in index.search_vector(vector, k=5)]


def test_text_modality_searches_the_texts(client):
    r = knn(
        client,
        clip_client_body(text="a red circle", modality="text", num_images=2, num_result_ids=2),
    )
    results = r.json()
    assert len(results) == 2 and all("caption" in x and "url" not in x for x in results)


def test_more_ids_than_images_carry_metadata_only_for_the_first(client):
    r = knn(client, clip_client_body(text="shape", num_images=2, num_result_ids=6))
    results = r.json()
    assert len(results) == 6
    assert all("url" in x for x in results[:2])
    assert all(set(x) == {"id", "similarity"} for x in results[2:])


def test_num_result_ids_is_capped_at_max_k(client):
    r = knn(client, clip_client_body(text="shape", num_images=3000, num_result_ids=3000))
    assert r.status_code == 200 and len(r.json()) == 10  # all of the index, under max_k 30


def test_metadata_for_ids(client, index):
    ids = [h.id for h in index.search_text("x", k=3)] + [987654]
    body = json.dumps({"ids": ids, "indice_name": "clipsearch"}).encode()
    r = client.post("/metadata", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 200
    rows = r.json()
    assert [row["id"] for row in rows] == ids
    assert all(row["metadata"]["url"].endswith(f"/v1/images/{row['id']}") for row in rows[:3])
    assert rows[3]["metadata"] == {}


def test_compat_errors_are_4xx_json(client):
    is_error(knn(client, b"not json"), 422)
    is_error(knn(client, clip_client_body()), 422, "empty_query")
    is_error(knn(client, clip_client_body(text="x", indice_name="laion5B")), 422, "unknown_index")
    is_error(knn(client, clip_client_body(text="x", modality="video")), 422)
    is_error(knn(client, clip_client_body(image="@@@")), 422, "invalid_base64")
    err = is_error(
        knn(client, clip_client_body(image_url="http://example.com/cat.jpg")),
        422,
        "unsupported_image_url",
    )
    assert "not fetched" in err["detail"]
    is_error(knn(client, clip_client_body(embedding_input=[0.1, 0.2])), 422)
    is_error(client.post("/metadata", content=b'{"ids": "x"}'), 422)


def test_cors_for_clip_front_on_an_allowed_origin(index):
    origin = {"Origin": "http://clip-front.example"}
    with TestClient(app_for(index, cors_origins=[origin["Origin"]])) as client:
        r = client.post("/knn-service", content=clip_client_body(text="x"), headers=origin)
        assert r.headers["access-control-allow-origin"] == origin["Origin"]
        r = client.get("/indices-list", headers=origin)
        assert r.headers["access-control-allow-origin"] == origin["Origin"]

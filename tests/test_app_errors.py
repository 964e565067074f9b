"""Every bad input is a 4xx with a JSON body that says what is wrong, never a 500."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_app_support import API_KEY, app_for, build_index, is_error, jpeg_bytes, png_bytes

WRITE = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build_index(tmp_path_factory.mktemp("errors"), n=6)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def client(index):
    app = app_for(
        index,
        max_k=20,
        max_query_chars=50,
        max_upload_bytes=20_000,
        max_request_bytes=200_000,
        max_image_pixels=1_000_000,
        max_batch_items=3,
    )
    with TestClient(app) as c:
        yield c


def search_file(client, data: bytes, name: str = "q.png"):
    return client.post("/v1/search/image", files={"file": (name, data, "application/octet-stream")})


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"query": ""}, "empty_query", "empty"),
        ({"query": "   \n\t"}, "empty_query", "empty"),
        ({"query": "x" * 51}, "query_too_long", "51 characters"),
        ({"query": "red", "k": 0}, "invalid_request", "k"),
        ({"query": "red", "k": -3}, "invalid_request", "k"),
        ({"query": "red", "k": 21}, "k_out_of_range", "between 1 and 20"),
        ({"query": "red", "k": "many"}, "invalid_request", "k"),
        ({"query": "red", "target": "videos"}, "invalid_request", "target"),
        ({"query": "red", "colour": "blue"}, "invalid_request", "colour"),
        ({"k": 3}, "invalid_request", "query"),
        ({"query": 42}, "invalid_request", "query"),
        ({"query": "red", "target": "texts", "filter": {"path_prefix": "/x"}}, None, "path_prefix"),
    ],
)
def test_bad_text_queries(client, body, code, words):
    err = is_error(client.post("/v1/search/text", json=body), 422, code)
    assert words in err["detail"], err


def test_body_that_is_not_json(client):
    r = client.post(
        "/v1/search/text", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in is_error(r, 422)["detail"]
    r = client.post(
        "/v1/search/image", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in is_error(r, 422)["detail"]


def test_non_image_upload_is_415(client):
    err = is_error(search_file(client, b"%PDF-1.4 definitely not a picture"), 415, "not_an_image")
    assert "not an image" in err["detail"]
    is_error(search_file(client, b"GIF89a" + b"\x00" * 3), 415)


def test_empty_upload(client):
    is_error(search_file(client, b""), 422, "empty_upload")


def test_truncated_images_are_400(client):
    data = png_bytes(size=64)
    err = is_error(search_file(client, data[: len(data) * 2 // 3]), 400, "corrupt_image")
    assert "truncated" in err["detail"] or "decoded" in err["detail"]
    jpg = jpeg_bytes(size=96)
    is_error(search_file(client, jpg[: len(jpg) // 2], "q.jpg"), 400, "corrupt_image")


def test_decompression_bombs_are_refused_before_decoding(client):
    # Over the configured cap (1 MP) but a small file: refused from its header.
    buf = io.BytesIO()
    Image.new("1", (2000, 1000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 20_000
    err = is_error(search_file(client, buf.getvalue()), 413, "image_too_large")
    assert "2000x1000" in err["detail"] and "decompression bomb" in err["detail"]
    # A header claiming 100k x 100k pixels (PIL's own bomb check trips first).
    err = is_error(search_file(client, png_header_only(100_000, 100_000)), 413, "image_too_large")
    assert "pixels" in err["detail"]


def noise_png(size: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_upload_over_the_size_cap_is_413(client):
    big = noise_png(128)
    assert len(big) > 20_000
    err = is_error(search_file(client, big), 413, "upload_too_large")
    assert "20000-byte cap" in err["detail"]
    b64 = base64.b64encode(big).decode()
    is_error(client.post("/v1/search/image", json={"image": b64}), 413, "upload_too_large")
    is_error(client.post("/v1/embed/image", json={"images": [b64]}), 413)
    is_error(
        client.post("/v1/images", files=[("files", ("a.png", big, "image/png"))], headers=WRITE),
        413,
    )


def test_request_body_over_the_request_cap_is_413(client):
    huge = b"x" * 300_000
    # Declared length: refused before the body is read.
    r = client.post("/v1/search/text", content=huge, headers={"content-type": "application/json"})
    assert "request body" in is_error(r, 413, "request_too_large")["detail"]

    # Chunked, no length: refused as it streams.
    def chunks():
        for _ in range(30):
            yield b"y" * 10_000

    r = client.post(
        "/v1/search/image", content=chunks(), headers={"content-type": "application/json"}
    )
    is_error(r, 413, "request_too_large")


def test_bad_base64_and_conflicting_image_fields(client):
    is_error(
        client.post("/v1/search/image", json={"image": "%%%not-base64%%%"}), 422, "invalid_base64"
    )
    b64 = base64.b64encode(png_bytes()).decode()
    err = is_error(client.post("/v1/search/image", json={"image": b64, "image_id": 1}), 422)
    assert "exactly one" in err["detail"]
    is_error(client.post("/v1/search/image", json={"k": 3}), 422)
    is_error(
        client.post("/v1/search/image", files={"other": ("a.png", png_bytes())}),
        422,
        "missing_file",
    )
    r = client.post("/v1/search/image", files={"file": ("a.png", png_bytes())}, data={"k": "lots"})
    is_error(r, 422)
    r = client.post("/v1/search/image", files={"file": ("a.png", png_bytes())}, data={"k": "999"})
    is_error(r, 422, "k_out_of_range")


def test_bad_vectors(client, index):
    err = is_error(client.post("/v1/search/vector", json={"vector": [0.1, 0.2]}), 422)
    assert f"dim {index.dim}" in err["detail"]
    is_error(client.post("/v1/search/vector", json={"vector": [0.0] * index.dim}), 422)
    is_error(client.post("/v1/search/vector", json={"vector": "0.1,0.2"}), 422)
    huge = "[" + ",".join(["1e400"] * index.dim) + "]"  # parses as infinity
    r = client.post(
        "/v1/search/vector",
        content=f'{{"vector": {huge}}}',
        headers={"content-type": "application/json"},
    )
    is_error(r, 422)
    # Any finite scale is fine: the server normalises.
    assert client.post("/v1/search/vector", json={"vector": [1e300] * index.dim}).status_code == 200


def test_unknown_ids_are_404(client, index):
    text_id = index.search_text("x", k=1, target="texts")[0].id
    for path in ("/v1/images/999999", "/v1/images/999999/thumbnail", f"/v1/images/{text_id}"):
        is_error(client.get(path), 404, "not_found")
    is_error(client.post("/v1/search/image", json={"image_id": 999999}), 404)
    is_error(client.delete("/v1/images/999999", headers=WRITE), 404)
    is_error(client.get("/v1/images/not-a-number"), 422)
    is_error(client.get("/no/such/route"), 404)


def test_indexed_file_gone_from_disk_is_404(tmp_path):
    index = build_index(tmp_path, n=2, texts=False)
    try:
        hit = index.search_text("x", k=1)[0]
        with TestClient(app_for(index)) as c:
            import os

            os.unlink(hit.path)
            err = is_error(c.get(f"/v1/images/{hit.id}"), 404, "file_missing")
            assert str(hit.id) in err["detail"]
            is_error(c.get(f"/v1/images/{hit.id}/thumbnail"), 404)
    finally:
        index.close()


def test_missing_and_wrong_keys(client):
    files = [("files", ("a.png", png_bytes(), "image/png"))]
    err = is_error(client.post("/v1/images", files=files), 401, "missing_key")
    assert "X-API-Key" in err["detail"]
    is_error(
        client.post("/v1/images", files=files, headers={"X-API-Key": "wrong"}), 403, "wrong_key"
    )
    is_error(client.post("/v1/images", files=files, headers={"Authorization": "Bearer wrong"}), 403)
    is_error(client.delete("/v1/images/1"), 401)
    is_error(client.delete("/v1/images/1", headers={"X-API-Key": "wrong"}), 403)


def test_batches_over_the_item_limit(client):
    is_error(client.post("/v1/embed/text", json={"texts": ["a"] * 4}), 422, "too_many")
    is_error(client.post("/v1/embed/text", json={"texts": []}), 422)
    is_error(client.post("/v1/embed/text", json={"texts": ["ok", ""]}), 422, "empty_query")
    b64 = base64.b64encode(png_bytes()).decode()
    is_error(client.post("/v1/embed/image", json={"images": [b64] * 4}), 422, "too_many")
    files = [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(4)]
    err = is_error(client.post("/v1/embed/image", files=files), 400)  # the form parser's limit
    assert "Too many files" in err["detail"]


def test_bad_upload_to_add_stores_nothing(client, index):
    before = index.stats()["images"]
    files = [
        ("files", ("good.png", png_bytes("square", "red", "green"), "image/png")),
        ("files", ("bad.png", b"not an image", "image/png")),
    ]
    is_error(client.post("/v1/images", files=files, headers=WRITE), 415)
    assert index.stats()["images"] == before


def test_wrong_method(client):
    r = client.get("/v1/search/text")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"

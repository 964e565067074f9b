"""``app.client``: the sync client over TestClient, the async one over the ASGI app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from synthetic import draw
from test_app_support import API_KEY, app_for, build_index, png_bytes

from app.client import AsyncClient, Client, ServiceError
from app.schemas import Hit
from models.errors import ClipsearchError


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = build_index(tmp_path_factory.mktemp("client"), n=8)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def app(index):
    return app_for(index)


@pytest.fixture(scope="module")
def http(app):
    with TestClient(app) as c:
        yield c


def test_sync_client_mirrors_the_api(http, index, tmp_path):
    client = Client(http=http, api_key=API_KEY)
    hits = client.search_text("a red circle", k=3)
    assert all(isinstance(h, Hit) for h in hits) and len(hits) == 3
    assert [h.id for h in hits] == [h.id for h in index.search_text("a red circle", k=3)]

    texts = client.search_text("a red circle", k=2, target="texts")
    assert [h.kind for h in texts] == ["text", "text"]
    only = client.search_text("x", k=5, path_prefix=hits[0].path)
    assert [h.id for h in only] == [hits[0].id]

    path = tmp_path / "q.png"
    draw("circle", "red", "blue").save(path)
    from_path = client.search_image(path, k=2)
    from_bytes = client.search_image(path.read_bytes(), k=2)
    from_pil = client.search_image(draw("circle", "red", "blue"), k=2)
    assert [h.id for h in from_path] == [h.id for h in from_bytes] == [h.id for h in from_pil]
    alike = client.search_by_id(hits[0].id, k=2)  # the image itself is left out
    assert len(alike) == 2 and hits[0].id not in {h.id for h in alike}

    vectors = client.embed_texts(["a red circle", "a blue square"])
    assert vectors.shape == (2, index.dim) and vectors.dtype == np.float32
    assert client.search_vector(vectors[0], k=3)[0].id == hits[0].id
    images = client.embed_images([path, png_bytes()])
    assert images.shape == (2, index.dim)

    assert client.image(hits[0].id) == Path(hits[0].path).read_bytes()
    assert client.thumbnail(hits[0].id)[:2] == b"\xff\xd8"  # JPEG

    added = client.add_images([png_bytes("cross", "black", "yellow", 90)])
    new_id = added.added[0].id
    assert added.report["indexed"] == 1
    assert client.delete_image(new_id) is True

    info = client.index()
    assert info.provenance["model"] == "clipsearch-tiny"
    assert client.ready() is True


def test_sync_client_raises_service_errors(http):
    client = Client(http=http)  # no key
    with pytest.raises(ServiceError) as e:
        client.search_text("", k=3)
    assert e.value.status == 422 and e.value.code == "empty_query"
    assert isinstance(e.value, ClipsearchError)
    with pytest.raises(ServiceError) as e:
        client.add_images([png_bytes()])
    assert e.value.status == 401 and "key" in e.value.detail
    with pytest.raises(ServiceError) as e:
        client.image(987654)
    assert e.value.status == 404
    with pytest.raises(TypeError):
        client.search_image(12345)  # type: ignore[arg-type]


def test_async_client_mirrors_the_api(index):
    app = app_for(index)  # its own app: the TestClient's is bound to another event loop

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                client = AsyncClient(http=http, api_key=API_KEY)
                hits, texts = await asyncio.gather(
                    client.search_text("a red circle", k=3),
                    client.search_text("a red circle", k=2, target="texts"),
                )
                by_id = await client.search_by_id(hits[0].id, k=1)
                image = await client.search_image(png_bytes(), k=1)
                vectors = await client.embed_texts(["a red circle"])
                by_vector = await client.search_vector(vectors[0], k=3)
                thumb = await client.thumbnail(hits[0].id)
                info = await client.index()
                with pytest.raises(ServiceError) as e:
                    await client.search_text("x", k=0)
                return hits, texts, by_id, image, by_vector, thumb, info, e.value

    hits, texts, by_id, image, by_vector, thumb, info, err = asyncio.run(scenario())
    assert [h.id for h in hits] == [h.id for h in index.search_text("a red circle", k=3)]
    assert [h.kind for h in texts] == ["text", "text"]
    assert len(by_id) == 1 and by_id[0].id != hits[0].id  # look-alikes, not the image itself
    assert len(image) == 1
    assert [h.id for h in by_vector] == [h.id for h in hits]
    assert thumb[:2] == b"\xff\xd8"
    assert info.stats["images"] == 8
    assert err.status == 422


def test_client_owns_and_closes_its_http_client():
    client = Client("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(httpx.ConnectError):
        client.ready()
    client.close()

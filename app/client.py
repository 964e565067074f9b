"""A Python client for the clipsearch service, sync (``Client``) and async (``AsyncClient``).

    with Client("http://localhost:8000") as c:
        for hit in c.search_text("a dog on a beach", k=5):
            print(hit.score, hit.path, hit.url)

Both mirror the /v1 API method for method; an error answer raises ``ServiceError`` with the
service's status, code and message. Each request is described once (``_Call``) and sent by
either transport, so the two clients cannot drift apart.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import numpy as np

from app.remote import ServiceError
from app.schemas import AddImagesResponse, Hit, IndexInfo, SearchResponse

__all__ = ["AsyncClient", "Client", "ServiceError"]

T = TypeVar("T")
ImageInput = bytes | str | Path | Any  # Any: a PIL image


@dataclass
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success or response.status_code == 304:
        return
    try:
        body = response.json()
        detail, code = str(body.get("detail")), str(body.get("code", "error"))
    except (ValueError, AttributeError):
        detail, code = response.text[:500], "error"
    raise ServiceError(response.status_code, code, detail)


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    """A file name and the bytes of ``image`` (a path, raw bytes or a PIL image)."""
    if isinstance(image, bytes):
        return "image", image
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes()
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return "image.png", buf.getvalue()
    raise TypeError(f"expected bytes, a path or a PIL image, not {type(image).__name__}")


def _search_body(k: int, target: str, path_prefix: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"k": k, "target": target}
    if path_prefix is not None:
        body["filter"] = {"path_prefix": path_prefix}
    return body


def _hits(response: httpx.Response) -> list[Hit]:
    return SearchResponse.model_validate(response.json()).hits


def _vectors(response: httpx.Response) -> np.ndarray:
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


class _Calls:
    """What each API method sends and how its answer is read."""

    @staticmethod
    def search_text(query: str, k: int, target: str, path_prefix: str | None) -> _Call[list[Hit]]:
        body = {"query": query, **_search_body(k, target, path_prefix)}
        return _Call("POST", "/v1/search/text", _hits, {"json": body})

    @staticmethod
    def search_image(
        image: ImageInput, k: int, target: str, path_prefix: str | None
    ) -> _Call[list[Hit]]:
        name, data = _image_bytes(image)
        form = {"k": str(k), "target": target}
        if path_prefix is not None:
            form["path_prefix"] = path_prefix
        return _Call(
            "POST", "/v1/search/image", _hits, {"files": {"file": (name, data)}, "data": form}
        )

    @staticmethod
    def search_by_id(
        image_id: int, k: int, target: str, path_prefix: str | None
    ) -> _Call[list[Hit]]:
        body = {"image_id": image_id, **_search_body(k, target, path_prefix)}
        return _Call("POST", "/v1/search/image", _hits, {"json": body})

    @staticmethod
    def search_vector(
        vector: Sequence[float] | np.ndarray, k: int, target: str, path_prefix: str | None
    ) -> _Call[list[Hit]]:
        values = np.asarray(vector, dtype=np.float32).ravel().tolist()
        body = {"vector": values, **_search_body(k, target, path_prefix)}
        return _Call("POST", "/v1/search/vector", _hits, {"json": body})

    @staticmethod
    def embed_texts(texts: Sequence[str]) -> _Call[np.ndarray]:
        return _Call("POST", "/v1/embed/text", _vectors, {"json": {"texts": list(texts)}})

    @staticmethod
    def embed_images(images: Sequence[ImageInput]) -> _Call[np.ndarray]:
        files = [("files", _image_bytes(im)) for im in images]
        return _Call("POST", "/v1/embed/image", _vectors, {"files": files})

    @staticmethod
    def image(image_id: int) -> _Call[bytes]:
        return _Call("GET", f"/v1/images/{int(image_id)}", lambda r: r.content)

    @staticmethod
    def thumbnail(image_id: int) -> _Call[bytes]:
        return _Call("GET", f"/v1/images/{int(image_id)}/thumbnail", lambda r: r.content)

    @staticmethod
    def add_images(images: Sequence[ImageInput]) -> _Call[AddImagesResponse]:
        files = [("files", _image_bytes(im)) for im in images]
        return _Call(
            "POST",
            "/v1/images",
            lambda r: AddImagesResponse.model_validate(r.json()),
            {"files": files},
        )

    @staticmethod
    def delete_image(image_id: int) -> _Call[bool]:
        return _Call("DELETE", f"/v1/images/{int(image_id)}", lambda r: bool(r.json()["removed"]))

    @staticmethod
    def index() -> _Call[IndexInfo]:
        return _Call("GET", "/v1/index", lambda r: IndexInfo.model_validate(r.json()))

    @staticmethod
    def ready() -> _Call[bool]:
        return _Call("GET", "/readyz", lambda r: r.status_code == 200)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


class Client:
    """Blocking client. ``http`` lets you pass your own ``httpx.Client`` (or a TestClient)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._own = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = _headers(api_key)

    def _send(self, call: _Call[T], check: bool = True) -> T:
        response = self._http.request(call.method, call.path, headers=self._headers, **call.kwargs)
        if check:
            _raise_for(response)
        return call.parse(response)

    def search_text(
        self, query: str, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return self._send(_Calls.search_text(query, k, target, path_prefix))

    def search_image(
        self, image: ImageInput, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return self._send(_Calls.search_image(image, k, target, path_prefix))

    def search_by_id(
        self, image_id: int, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return self._send(_Calls.search_by_id(image_id, k, target, path_prefix))

    def search_vector(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 10,
        target: str = "images",
        path_prefix: str | None = None,
    ) -> list[Hit]:
        return self._send(_Calls.search_vector(vector, k, target, path_prefix))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._send(_Calls.embed_texts(texts))

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        return self._send(_Calls.embed_images(images))

    def image(self, image_id: int) -> bytes:
        return self._send(_Calls.image(image_id))

    def thumbnail(self, image_id: int) -> bytes:
        return self._send(_Calls.thumbnail(image_id))

    def add_images(self, images: Sequence[ImageInput]) -> AddImagesResponse:
        return self._send(_Calls.add_images(images))

    def delete_image(self, image_id: int) -> bool:
        return self._send(_Calls.delete_image(image_id))

    def index(self) -> IndexInfo:
        return self._send(_Calls.index())

    def ready(self) -> bool:
        return self._send(_Calls.ready(), check=False)

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same API for asyncio; ``http`` takes your own ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._own = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._headers = _headers(api_key)

    async def _send(self, call: _Call[T], check: bool = True) -> T:
        response = await self._http.request(
            call.method, call.path, headers=self._headers, **call.kwargs
        )
        if check:
            _raise_for(response)
        return call.parse(response)

    async def search_text(
        self, query: str, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return await self._send(_Calls.search_text(query, k, target, path_prefix))

    async def search_image(
        self, image: ImageInput, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return await self._send(_Calls.search_image(image, k, target, path_prefix))

    async def search_by_id(
        self, image_id: int, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        return await self._send(_Calls.search_by_id(image_id, k, target, path_prefix))

    async def search_vector(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 10,
        target: str = "images",
        path_prefix: str | None = None,
    ) -> list[Hit]:
        return await self._send(_Calls.search_vector(vector, k, target, path_prefix))

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self._send(_Calls.embed_texts(texts))

    async def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        return await self._send(_Calls.embed_images(images))

    async def image(self, image_id: int) -> bytes:
        return await self._send(_Calls.image(image_id))

    async def thumbnail(self, image_id: int) -> bytes:
        return await self._send(_Calls.thumbnail(image_id))

    async def add_images(self, images: Sequence[ImageInput]) -> AddImagesResponse:
        return await self._send(_Calls.add_images(images))

    async def delete_image(self, image_id: int) -> bool:
        return await self._send(_Calls.delete_image(image_id))

    async def index(self) -> IndexInfo:
        return await self._send(_Calls.index())

    async def ready(self) -> bool:
        return await self._send(_Calls.ready(), check=False)

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

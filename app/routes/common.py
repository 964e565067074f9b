"""Helpers the routers share: limit checks that depend on settings, and hit serialisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import torch
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.errors import ApiError, bad_request
from app.schemas import Hit, ImageBatch
from app.service import SearchService
from app.settings import Settings
from app.uploads import b64decode, decode_image, decoded_pixels, too_large

# OpenAPI for routes that take images as multipart ``files`` or JSON base64 (``ImageBatch``);
# FastAPI cannot infer it because those routes read the request body themselves.
IMAGE_BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageBatch"}},
        },
        "required": True,
    }
}


def check_k(k: int, settings: Settings) -> int:
    if not 1 <= k <= settings.max_k:
        raise bad_request(f"k must be between 1 and {settings.max_k}, not {k}", "k_out_of_range")
    return k


def check_query(query: str, settings: Settings, what: str = "query") -> str:
    text = query.strip()
    if not text:
        raise bad_request(f"{what} is empty", "empty_query")
    if len(text) > settings.max_query_chars:
        raise bad_request(
            f"{what} is {len(text)} characters, over the {settings.max_query_chars} limit",
            "query_too_long",
        )
    return text


def check_count(n: int, settings: Settings, what: str) -> None:
    if n > settings.max_batch_items:
        raise bad_request(
            f"{n} {what} in one request, over the {settings.max_batch_items} limit", "too_many"
        )


def image_url(request: Request, item_id: int) -> str:
    """The absolute URL of ``GET /v1/images/{id}`` (built directly: ``url_for`` walks every
    route, and a page of hits needs two URLs per hit)."""
    return f"{request.base_url}v1/images/{int(item_id)}"


def hit_out(hit: Any, request: Request) -> Hit:
    """The library's hit plus URLs to its image, served by id."""
    is_image = hit.kind == "image"
    return Hit(
        id=hit.id,
        score=float(hit.score),
        kind=hit.kind,
        path=hit.path,
        text=hit.text,
        url=image_url(request, hit.id) if is_image else None,
        thumbnail_url=f"{image_url(request, hit.id)}/thumbnail" if is_image else None,
        width=hit.width,
        height=hit.height,
        duplicates=list(hit.duplicates),
        taken=hit.taken,
        camera=hit.camera,
    )


async def read_capped(upload: UploadFile, cap: int) -> bytes:
    """Read an upload, refusing it (413) as soon as it passes ``cap``."""
    data = await upload.read(cap + 1)
    if len(data) > cap:
        raise too_large(upload.size if upload.size is not None else len(data), cap)
    return data


async def decode_uploads(
    blobs: Sequence[bytes], settings: Settings, service: SearchService
) -> list[torch.Tensor]:
    """The model's input tensors for a request's images, decoded off the event loop.

    Every header is read first, so a request whose images would decode to more than
    ``max_request_pixels`` is refused (413) before any is decoded. Each decode holds a slot of the
    service's ``DecodeGate`` (429 when too many wait) until its image is reduced to the model's
    input: memory is bounded by the slots, however many requests arrive.
    """
    encoder = service.encoder
    total = sum(
        decoded_pixels(
            data, settings.max_upload_bytes, settings.max_image_pixels, encoder.image_size
        )
        for data in blobs
    )
    if total > settings.max_request_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the images of this request decode to {total} pixels, over the "
            f"{settings.max_request_pixels}-pixel cap per request "
            "(CLIPSEARCH_MAX_REQUEST_PIXELS); send fewer or smaller images per request",
        )
    out = []
    for data in blobs:
        async with service.decodes.slot():
            out.append(await anyio.to_thread.run_sync(_model_input, data, settings, encoder))
    return out


def _model_input(data: bytes, settings: Settings, encoder: Any) -> torch.Tensor:
    image = decode_image(
        data, settings.max_upload_bytes, settings.max_image_pixels, encoder.image_size
    )
    return encoder.preprocess(image)


async def decode_upload(data: bytes, settings: Settings, service: SearchService) -> torch.Tensor:
    """One upload as the model's input tensor (see ``decode_uploads``)."""
    return (await decode_uploads([data], settings, service))[0]


def first_error(e: ValidationError) -> str:
    """The first problem of a body validated by hand, in the words the handlers use."""
    err = e.errors()[0]
    if err.get("type") == "json_invalid":
        return "the body is not valid JSON"
    loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
    return f"{loc}: {err.get('msg')}"


async def image_blobs(request: Request, settings: Settings) -> list[bytes]:
    """The raw images of a batch request: multipart ``files`` parts or JSON base64 ``images``."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=settings.max_batch_items, max_fields=4)
        parts = form.getlist("files") + form.getlist("file")
        uploads = [f for f in parts if isinstance(f, UploadFile)]
        if not uploads:
            raise bad_request("multipart body needs 'files' parts with the images", "missing_file")
        check_count(len(uploads), settings, "images")
        return [await read_capped(u, settings.max_upload_bytes) for u in uploads]
    try:
        body = ImageBatch.model_validate_json(await request.body())
    except ValidationError as e:
        raise bad_request(first_error(e)) from e
    check_count(len(body.images), settings, "images")
    return [b64decode(b, f"images[{i}]") for i, b in enumerate(body.images)]

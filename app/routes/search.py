"""``/v1/search/*``: text→, image→ and vector→ images or texts."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.deps import ReadAccess, ServiceDep, SettingsDep
from app.errors import bad_request, not_found
from app.routes.common import (
    check_k,
    check_query,
    decode_upload,
    first_error,
    hit_out,
    read_capped,
)
from app.schemas import (
    ERROR_RESPONSES,
    ImageSearchRequest,
    SearchBase,
    SearchResponse,
    TextSearchRequest,
    VectorSearchRequest,
)
from app.uploads import b64decode
from indexer.query import Query, Term, parse_query
from indexer.refine import apply_cutoff

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[ReadAccess])


def _response(hits: list, body: SearchBase, request: Request, start: float) -> SearchResponse:
    """The hits after the request's optional cutoff (``indexer.refine.apply_cutoff``)."""
    kept = apply_cutoff(hits, body.min_score, body.min_relative)
    return SearchResponse(
        hits=[hit_out(h, request) for h in kept],
        target=body.target,
        took_ms=round((time.perf_counter() - start) * 1000, 3),
    )


def _form_int(value: object, name: str, default: int) -> int:
    """A whole number sent as a multipart field (fields are text, unlike JSON's typed numbers)."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise bad_request(f"{name} must be a whole number, not {text[:40]!r}")
    return int(text)


@router.post("/text", responses=ERROR_RESPONSES)
async def search_text(
    body: TextSearchRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> SearchResponse:
    """Text → images (what people mostly want) or text → texts. ``query`` is plain words or an
    expression: ``"beach" + "sunset" - 0.5:"people"``, ``#42 + "at night"`` (see
    ``indexer.query``); a malformed expression is a 422 that says where."""
    start = time.perf_counter()
    query = parse_query(check_query(body.query, settings))
    k = check_k(body.k, settings)
    taken = body.taken
    if query.plain_text is not None and taken is None:  # the common case: batched
        hits = await service.search_text(query.plain_text, k, body.target, body.path_prefix)
    else:
        hits = await service.search_query(query, k, body.target, body.path_prefix, taken)
    return _response(hits, body, request, start)


@router.post(
    "/image",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ImageSearchRequest"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "k": {"type": "integer", "default": 10},
                            "target": {"type": "string", "enum": ["images", "texts"]},
                            "path_prefix": {"type": "string"},
                            "min_score": {"type": "number"},
                            "min_relative": {"type": "number"},
                        },
                        "required": ["file"],
                    }
                },
            },
            "required": True,
        }
    },
)
async def search_image(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> SearchResponse:
    """Image → images or image → texts: a multipart upload (``file``), or JSON with base64
    ``image`` or the ``image_id`` of an indexed image (how the web page's "search by it" works)."""
    start = time.perf_counter()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request("multipart body needs a 'file' part with the image", "missing_file")
        data = await read_capped(upload, settings.max_upload_bytes)
        try:
            body = ImageSearchRequest.model_validate(
                {
                    "k": _form_int(form.get("k"), "k", 10),
                    "target": form.get("target") or "images",
                    "filter": {
                        "path_prefix": form.get("path_prefix") or None,
                        "taken_from": form.get("taken_from") or None,
                        "taken_to": form.get("taken_to") or None,
                    },
                    "min_score": form.get("min_score") or None,
                    "min_relative": form.get("min_relative") or None,
                }
            )
        except ValidationError as e:
            raise bad_request(first_error(e)) from e
    else:
        try:
            body = ImageSearchRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise bad_request(first_error(e)) from e
        if (body.image is None) == (body.image_id is None):
            raise bad_request("send exactly one of 'image' (base64) and 'image_id'")
        data = b64decode(body.image) if body.image is not None else None
    k = check_k(body.k, settings)
    if data is None:
        assert body.image_id is not None
        item = await service.get(body.image_id)
        if item.kind != "image":
            raise not_found(f"item {body.image_id} is a {item.kind}, not an image")
        # By its stored vector, leaving the image itself out of its look-alikes.
        query = Query((Term(1.0, id=body.image_id),))
        hits = await service.search_query(query, k, body.target, body.path_prefix, body.taken)
    else:
        image = await decode_upload(data, settings, service)
        hits = await service.search_image(image, k, body.target, body.path_prefix, body.taken)
    return _response(hits, body, request, start)


@router.post("/vector", responses=ERROR_RESPONSES)
async def search_vector(
    body: VectorSearchRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> SearchResponse:
    """A precomputed embedding → images or texts (normalised here, so any scale works)."""
    start = time.perf_counter()
    k = check_k(body.k, settings)
    vector = np.asarray(body.vector, dtype=np.float64)
    hits = await service.search_vector(vector, k, body.target, body.path_prefix)
    return _response(hits, body, request, start)

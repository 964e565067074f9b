"""clip-retrieval compatibility: ``/knn-service``, ``/metadata``, ``/indices-list`` as clip back
answers them, so ``clip_retrieval.clip_client.ClipClient`` and clip-front work unchanged.

Bodies are parsed as JSON whatever the Content-Type: ClipClient sends none and clip-front sends
``text/plain`` (which also spares browsers a CORS preflight).

Supported: ``text``, ``image`` (base64), ``embedding_input``, ``image_url`` when it is one of this
server's own ``/v1/images/{id}`` URLs (what clip-front sends for "search by this image"; other
URLs are refused rather than fetched), ``modality`` (``image`` → the images, ``text`` → the texts),
``num_images``, ``num_result_ids`` (both capped at ``max_k``), ``indice_name``. Accepted and
ignored: ``use_mclip``, ``deduplicate``, ``use_safety_model``, ``use_violence_detector``,
``aesthetic_score``, ``aesthetic_weight`` (this server has no such models).
Each result is ``{"id", "similarity", "url", "caption"}`` (``url`` only for images; the caption of
an image is its file name, of a text the text); ``image`` (inline base64) is never sent.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlparse

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.deps import ReadAccess, ServiceDep, SettingsDep
from app.errors import bad_request, not_found
from app.routes.common import check_query, decode_upload, first_error, image_url
from app.schemas import ItemId
from app.uploads import b64decode

router = APIRouter(tags=["clip-retrieval compatibility"], dependencies=[ReadAccess])

MAX_METADATA_IDS = 1000
INT64_MAX = 2**63 - 1
_OWN_IMAGE = re.compile(r"/v1/images/(\d+)(?:/thumbnail)?/?$")


class KnnRequest(BaseModel):
    """clip back's knn-service body."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: str = "image"
    num_images: int = Field(40, ge=0)
    num_result_ids: int | None = Field(None, ge=0)
    indice_name: str | None = None
    use_mclip: bool | None = False
    deduplicate: bool | None = False
    use_safety_model: bool | None = False
    use_violence_detector: bool | None = False
    aesthetic_score: Any = None
    aesthetic_weight: Any = None

    @field_validator("modality")
    @classmethod
    def _modality(cls, v: str) -> str:
        if v not in ("image", "text"):
            raise ValueError("modality must be 'image' or 'text'")
        return v


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[ItemId] = Field(default_factory=list, max_length=MAX_METADATA_IDS)
    indice_name: str | None = None


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body is not valid JSON: {e}") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise bad_request(first_error(e)) from e


def _check_indice(name: str | None, settings: SettingsDep) -> None:
    if name is not None and name != settings.compat_index_name:
        raise bad_request(
            f"unknown indice_name {name!r}; this server has [{settings.compat_index_name!r}]",
            "unknown_index",
        )


def _metadata(hit: Any, request: Request) -> dict[str, Any]:
    if hit.kind == "image":
        return {"url": image_url(request, hit.id), "caption": (hit.path or "").rsplit("/", 1)[-1]}
    return {"caption": hit.text}


@router.get("/indices-list")
async def indices_list(settings: SettingsDep) -> list[str]:
    """The one index this server serves."""
    return [settings.compat_index_name]


@router.post("/knn-service", description=__doc__)
async def knn_service(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> list[dict[str, Any]]:
    """Nearest neighbours of a text, an image or an embedding, as clip back returns them."""
    body: KnnRequest = await _parse(request, KnnRequest)
    _check_indice(body.indice_name, settings)
    target = "images" if body.modality == "image" else "texts"
    num_ids = body.num_result_ids if body.num_result_ids is not None else body.num_images
    if num_ids == 0:
        return []
    k = min(num_ids, settings.max_k)
    if body.text:
        query = check_query(body.text, settings, "text")
        hits = await service.search_text(query, k, target)
    elif body.image is not None or body.image_url is not None:
        if body.image is not None:
            image = await decode_upload(b64decode(body.image), settings, service)
            hits = await service.search_image(image, k, target)
        else:
            match = _OWN_IMAGE.search(urlparse(body.image_url or "").path)
            if not match:
                raise bad_request(
                    "image_url must be one of this server's /v1/images/{id} URLs; other URLs "
                    "are not fetched (send the image as base64 in 'image')",
                    "unsupported_image_url",
                )
            item_id = int(match.group(1))
            if item_id > INT64_MAX:
                raise not_found(f"no item with id {item_id} in the index")
            path = await service.get_image_path(item_id)
            hits = await service.search_image(path, k, target)
    elif body.embedding_input is not None:
        hits = await service.search_vector(np.asarray(body.embedding_input, np.float64), k, target)
    else:
        raise bad_request("send one of text, image, image_url or embedding_input", "empty_query")
    results = []
    for rank, hit in enumerate(hits):
        row = _metadata(hit, request) if rank < max(body.num_images, 1) else {}
        row.update(id=hit.id, similarity=float(hit.score))
        results.append(row)
    return results


@router.post("/metadata")
async def metadata(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> list[dict[str, Any]]:
    """``[{"id", "metadata": {"url", "caption"}}]`` for ids from a knn-service answer."""
    body: MetadataRequest = await _parse(request, MetadataRequest)
    _check_indice(body.indice_name, settings)
    hits = await service.get_many(body.ids)
    return [
        {"id": i, "metadata": _metadata(h, request) if h is not None else {}}
        for i, h in zip(body.ids, hits, strict=True)
    ]

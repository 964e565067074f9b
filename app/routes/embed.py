"""``/v1/embed/*``: the index's own encoder as a service, so clients embed in the same space."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.deps import ReadAccess, ServiceDep, SettingsDep
from app.routes.common import (
    IMAGE_BATCH_BODY,
    check_count,
    check_query,
    decode_uploads,
    image_blobs,
)
from app.schemas import ERROR_RESPONSES, EmbedResponse, EmbedTextRequest

router = APIRouter(
    prefix="/v1/embed", tags=["embed"], dependencies=[ReadAccess], responses=ERROR_RESPONSES
)


def _response(service: ServiceDep, vectors) -> EmbedResponse:
    encoder = service.encoder
    return EmbedResponse(model=encoder.name, dim=encoder.dim, embeddings=vectors.tolist())


@router.post("/text")
async def embed_text(
    body: EmbedTextRequest, service: ServiceDep, settings: SettingsDep
) -> EmbedResponse:
    """L2-normalised text embeddings, one per text, in order."""
    check_count(len(body.texts), settings, "texts")
    texts = [check_query(t, settings, f"texts[{i}]") for i, t in enumerate(body.texts)]
    return _response(service, await service.embed_texts(texts))


@router.post(
    "/image",
    openapi_extra=IMAGE_BATCH_BODY,
)
async def embed_image(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> EmbedResponse:
    """L2-normalised image embeddings: multipart ``files`` or JSON base64 ``images``."""
    blobs = await image_blobs(request, settings)
    inputs = await decode_uploads(blobs, settings, service)
    return _response(service, await service.embed_images(inputs))

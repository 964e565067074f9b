"""``/v1/images``: originals and thumbnails by id (never by a client's path), add and delete."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse

from app.deps import ReadAccess, ServiceDep, SettingsDep, ThumbnailsDep, WriteAccess
from app.errors import ApiError
from app.routes.common import IMAGE_BATCH_BODY, decode_uploads, hit_out, image_blobs
from app.schemas import ERROR_RESPONSES, AddImagesResponse, DeleteResponse, ItemId
from app.uploads import open_checked, save_upload

PathId = Annotated[ItemId, Path(description="An image id, as search hits give it.")]
router = APIRouter(prefix="/v1/images", tags=["images"], responses=ERROR_RESPONSES)


@router.get(
    "/{image_id}",
    name="get_image",
    dependencies=[ReadAccess],
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}, "description": "The original file"}},
)
async def get_image(image_id: PathId, service: ServiceDep) -> FileResponse:
    """The original file as indexed."""
    path = await service.get_image_path(image_id)
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/{image_id}/thumbnail",
    name="get_thumbnail",
    dependencies=[ReadAccess],
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail"}},
)
async def get_thumbnail(
    image_id: PathId,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    thumbnails: ThumbnailsDep,
) -> Response:
    """A JPEG no larger than ``thumbnail_size`` on its longer side, cached in memory."""
    path = await service.get_image_path(image_id)
    try:
        data, etag = await anyio.to_thread.run_sync(thumbnails.get, path, settings.thumbnail_size)
    except Exception as e:  # an indexed file that was replaced by something undecodable
        raise ApiError(
            422, "corrupt_image", f"image {image_id} could not be decoded for a thumbnail: {e}"
        ) from e
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.post(
    "",
    status_code=201,
    dependencies=[WriteAccess],
    openapi_extra=IMAGE_BATCH_BODY,
)
async def add_images(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> AddImagesResponse:
    """Upload images (multipart ``files`` or JSON base64 ``images``) and index them.

    Each file is fully decoded first, so a bad one fails the request before anything is stored.
    """
    blobs = await image_blobs(request, settings)
    await decode_uploads(blobs, settings, service)  # refuse non-images, bombs, truncated files
    paths = []
    for data in blobs:
        fmt = open_checked(data, settings.max_image_pixels).format
        paths.append(await anyio.to_thread.run_sync(save_upload, data, fmt, settings.uploads))
    report, added = await service.add_images(paths)
    return AddImagesResponse(added=[hit_out(h, request) for h in added], report=report)


@router.delete("/{image_id}", dependencies=[WriteAccess])
async def delete_image(image_id: PathId, service: ServiceDep) -> DeleteResponse:
    """Remove an image from the index (its file stays where it is)."""
    hit = await service.get(image_id)
    if hit.kind != "image":
        raise ApiError(404, "not_found", f"item {image_id} is a {hit.kind}, not an image")
    removed = await service.remove(image_id)
    if not removed:
        raise ApiError(404, "not_found", f"no image with id {image_id} in the index")
    return DeleteResponse(id=image_id, removed=True)

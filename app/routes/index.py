"""``GET /v1/index``: what is served (counts, model provenance) and how the service is set up."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ReadAccess, ServiceDep, SettingsDep
from app.schemas import ERROR_RESPONSES, IndexInfo

router = APIRouter(
    prefix="/v1", tags=["index"], dependencies=[ReadAccess], responses=ERROR_RESPONSES
)


@router.get("/index")
async def index_info(service: ServiceDep, settings: SettingsDep) -> IndexInfo:
    """Stats and provenance, so a client can tell which model made the vectors it gets."""
    stats = await service.stats()
    return IndexInfo(
        stats=stats,
        provenance=service.encoder.provenance.to_dict(),
        directory=str(service.index.directory),
        service={
            "max_k": settings.max_k,
            "max_query_chars": settings.max_query_chars,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_batch_items": settings.max_batch_items,
            "batching": settings.batching,
            "batch_window_ms": settings.batch_window_ms,
            "max_batch": settings.max_batch,
            "inference_threads": settings.inference_threads,
            "reload_interval_s": settings.reload_interval_s,
            "last_reload": service.last_reload,
            "writes_enabled": settings.api_key is not None,
            "read_key_required": settings.read_key is not None,
        },
    )

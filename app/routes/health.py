"""Liveness, readiness and Prometheus metrics (all open: orchestrators and scrapers hold no key)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from app.deps import MetricsDep, ServiceDep
from app.metrics import CONTENT_TYPE
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health, "description": "Index not loaded"}})
async def readyz(service: ServiceDep) -> Response:
    """Ready once the index is loaded; until then 503 with the reason (e.g. no index yet)."""
    if service.ready:
        return JSONResponse(Health(status="ready").model_dump())
    body = Health(status="not_ready", detail=service.not_ready_reason)
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep, service: ServiceDep) -> Response:
    """Prometheus text format."""
    await anyio.to_thread.run_sync(service.refresh_size)  # stats() may touch the disk
    return Response(await anyio.to_thread.run_sync(metrics.render), media_type=CONTENT_TYPE)

"""``create_app(settings)``: the FastAPI application, its routers, middleware and lifespan.

Run it with ``clipsearch serve --index DIR``; the search page is at ``/``, the API docs at
``/docs`` and ``/redoc`` (offline: assets served from a package).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app import errors
from app.limits import BodyLimitMiddleware
from app.metrics import Metrics, MetricsMiddleware
from app.ports import IndexPort
from app.routes import compat, docs, embed, health, images, search
from app.routes import index as index_routes
from app.schemas import add_body_schemas, state_limits
from app.service import SearchService
from app.settings import Settings
from app.thumbnails import ThumbnailCache

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None, index: IndexPort | None = None) -> FastAPI:
    """Build the app. ``index`` serves an already open ``Index`` (tests, embedding apps); by
    default the lifespan opens ``settings.index_dir`` and closes it at shutdown."""
    settings = settings or Settings()
    metrics = Metrics()
    service = SearchService(settings, metrics, index=index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="clipsearch",
        summary="Semantic image search with a CLIP-style dual encoder.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by app.routes.docs from local assets (no CDN)
        redoc_url=None,
    )
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            dim = service.index.dim if service.ready else None
            schema = state_limits(add_body_schemas(default_openapi()), settings, dim)
            # Kept once the index is loaded (the vector's length is known from then on).
            app.openapi_schema = schema if dim is not None else None
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    app.state.thumbnails = ThumbnailCache(settings.thumbnail_cache_items)

    errors.install(app)
    docs.install(app)
    for router in (
        search.router,
        images.router,
        embed.router,
        index_routes.router,
        health.router,
        compat.router,
    ):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Outermost last: metrics see every request, including refused bodies and CORS preflights.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:  # off by default: other sites' pages must not read this API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            expose_headers=["ETag"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app

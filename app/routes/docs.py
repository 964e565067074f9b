"""``/docs`` (Swagger UI) and ``/redoc`` that work offline: their scripts and styles come from the
``fastapi-offline`` package's copy, served here, instead of FastAPI's default CDN links."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREFIX = "docs-assets"


def install(app: FastAPI) -> None:
    """Serve the docs pages and their assets; ``app`` must be built with ``docs_url=None,
    redoc_url=None``. URLs are relative, so the pages also work behind a path prefix."""
    missing = [
        n
        for n in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
        if not (ASSETS / n).is_file()
    ]
    if missing:
        raise RuntimeError(f"fastapi-offline at {ASSETS} lacks {missing}: reinstall it")
    app.mount(f"/{PREFIX}", StaticFiles(directory=ASSETS), name=PREFIX)

    page = {"openapi_url": "openapi.json", "title": f"{app.title}: API"}
    icon = f"{PREFIX}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        js, css = f"{PREFIX}/swagger-ui-bundle.js", f"{PREFIX}/swagger-ui.css"
        return get_swagger_ui_html(
            **page, swagger_js_url=js, swagger_css_url=css, swagger_favicon_url=icon
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        js = f"{PREFIX}/redoc.standalone.js"
        return get_redoc_html(
            **page, redoc_js_url=js, redoc_favicon_url=icon, with_google_fonts=False
        )

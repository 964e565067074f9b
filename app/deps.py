"""Request dependencies as ``Annotated`` aliases: the service, the settings, and the two keys.

A key is sent as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. Missing is 401, wrong is 403.
Writes need ``CLIPSEARCH_API_KEY`` (and are refused while none is configured); reads are open
unless ``CLIPSEARCH_READ_KEY`` is set, and then either key reads.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from app.errors import ApiError
from app.metrics import Metrics
from app.service import SearchService
from app.settings import Settings
from app.thumbnails import ThumbnailCache


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_service(request: Request) -> SearchService:
    return request.app.state.service


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_thumbnails(request: Request) -> ThumbnailCache:
    return request.app.state.thumbnails


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _matches(key: str, *expected: SecretStr | None) -> bool:
    ok = False
    for secret in expected:
        if secret is not None:
            # Compare against every configured key, so timing says nothing about which matched.
            ok |= secrets.compare_digest(key.encode(), secret.get_secret_value().encode())
    return ok


def _unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        "missing_key",
        f"{what} needs a key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_read(request: Request, settings: SettingsDep) -> None:
    """Reads are open unless a read key is configured."""
    if settings.read_key is None:
        return
    key = presented_key(request)
    if key is None:
        raise _unauthorized("reading from this server")
    if not _matches(key, settings.read_key, settings.api_key):
        raise ApiError(403, "wrong_key", "the key sent is not a valid read key")


def require_write(request: Request, settings: SettingsDep) -> None:
    """Changing the index always needs the API key."""
    if settings.api_key is None:
        raise ApiError(
            403, "writes_disabled", "writes are off: the server has no CLIPSEARCH_API_KEY set"
        )
    key = presented_key(request)
    if key is None:
        raise _unauthorized("changing the index")
    if not _matches(key, settings.api_key):
        raise ApiError(403, "wrong_key", "the key sent is not the API key")


ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)

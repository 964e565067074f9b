"""Every error leaves the service as JSON ``{"detail": "...", "code": "..."}`` with a 4xx status.

Library errors (``ClipsearchError``) are translated here, at the edge, so the library never needs
to know about HTTP; request validation errors get one readable sentence instead of a bare list.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import ClipsearchError

log = logging.getLogger(__name__)


class ApiError(StarletteHTTPException):
    """An error the service raises on purpose, with the status and code clients see.

    An ``HTTPException`` so that FastAPI passes it through when raised while reading the body.
    """

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, detail, headers)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def bad_request(detail: str, code: str = "invalid_request") -> ApiError:
    return ApiError(422, code, detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def not_ready(detail: str) -> ApiError:
    return ApiError(503, "not_ready", detail, headers={"Retry-After": "5"})


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "code": code, **extra}, status_code=status, headers=headers
    )


def _library_status(exc: ClipsearchError) -> tuple[int, str]:
    """Map a library error to HTTP by its class name, so new indexer errors need no edit here."""
    name = type(exc).__name__.lower()
    if "damaged" in name:
        return 503, "index_damaged"
    if "diskfull" in name:
        return 507, "disk_full"
    if "readonly" in name:
        return 409, "read_only"
    if "notfound" in name or "missing" in name:
        return 404, "not_found"
    if "conflict" in name or "locked" in name or "busy" in name:
        return 409, "conflict"
    return 422, "invalid_request"


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    """One sentence per problem, e.g. ``body.k: Input should be less than or equal to 100``."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
            loc = "body"
        elif loc == "body" and err.get("type") == "model_attributes_type":
            msg = "expected a JSON object, sent with Content-Type: application/json"
        parts.append(f"{loc}: {msg}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(ClipsearchError)
    async def _library_error(request: Request, exc: ClipsearchError) -> JSONResponse:
        status, code = _library_status(exc)
        if code == "index_damaged":
            request.app.state.service.mark_damaged(str(exc))
        return error_response(status, code, str(exc) or type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return error_response(
            422, "invalid_request", _describe_validation(list(exc.errors())), errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))

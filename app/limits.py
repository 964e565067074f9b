"""A cap on request bodies, answered with the service's JSON 413 before anything is parsed.

A declared Content-Length over the cap is refused without reading the body; a chunked body is
counted as it streams and refused as soon as it passes the cap.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response


def body_too_large(cap: int) -> ApiError:
    return ApiError(
        413,
        "request_too_large",
        f"the request body is over the {cap}-byte cap (CLIPSEARCH_MAX_REQUEST_BYTES)",
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            err = body_too_large(self.max_bytes)
            await error_response(err.status, err.code, err.detail)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the endpoint's body read; the ApiError handler answers it.
                    raise body_too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

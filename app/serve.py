"""``clipsearch serve``: flags override ``CLIPSEARCH_*`` environment variables, which override
the defaults in ``app.settings``. Keys are read from the environment only (never argv, which any
local user can see)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from indexer.location import default_index_dir
from models.errors import ClipsearchError

if TYPE_CHECKING:
    from fastapi import FastAPI


class ConfigError(ClipsearchError):
    """The service's settings are invalid; the message names the setting."""


def _check_port(host: str, port: int) -> None:
    """Bind and release ``host:port`` as uvicorn will, so a taken port fails in milliseconds."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}): another server may be using "
            "it; stop that one or pass --port N (or set CLIPSEARCH_PORT)"
        ) from e


def serve(
    index: Path | None = typer.Option(
        None,
        "--index",
        "-i",
        help="Index directory (else $CLIPSEARCH_INDEX_DIR, $CLIPSEARCH_INDEX, the user's default).",
    ),
    host: str | None = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000)."),
    batching: bool | None = typer.Option(
        None, "--batching/--no-batching", help="Dynamic batching of concurrent text queries."
    ),
    reload_interval: float | None = typer.Option(
        None, help="Seconds between checks for index changes; 0 turns them off."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    access_log: bool = typer.Option(False, help="Log every request."),
) -> None:
    """Serve an index over HTTP: the /v1 API (docs at /docs), a web page at /, and the
    clip-retrieval endpoints. Other settings come from CLIPSEARCH_* environment variables."""
    import uvicorn
    from pydantic import ValidationError

    from app.main import create_app
    from app.settings import Settings

    overrides = {
        "index_dir": index,
        "host": host,
        "port": port,
        "batching": batching,
        "reload_interval_s": reload_interval,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"setting {name} (CLIPSEARCH_{name.upper()}): {err['msg']}") from e
    if settings.index_dir is None:
        settings.index_dir = default_index_dir()
    if not settings.index_dir.is_dir():
        raise ConfigError(
            f"{settings.index_dir} is not a directory; create the index first "
            f"(clipsearch index PATH... --index {settings.index_dir})"
        )
    _check_port(settings.host, settings.port)  # before the model loads, not after
    app = create_app(settings)
    if settings.port:  # a fixed port: announced for `clipsearch search` on this machine
        _announce_while_serving(app, settings.index_dir, settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=5,
    )


def _announce_while_serving(app: FastAPI, index_dir: Path, host: str, port: int) -> None:
    """Announce the server once its index is open, withdraw it at shutdown (inside the lifespan:
    uvicorn re-raises SIGTERM after shutdown, so code after ``uvicorn.run`` never runs)."""
    from app import remote

    inner = app.router.lifespan_context
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            path = remote.announce(index_dir, f"http://{host}:{port}")
            try:
                yield
            finally:
                remote.withdraw(path)

    app.router.lifespan_context = lifespan

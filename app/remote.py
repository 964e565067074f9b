"""The command line's way to a running server: find the one serving an index, and ask it.

``clipsearch serve`` announces itself in a small file per index under the user's runtime
directory (URL and pid); ``clipsearch search`` reads it and, while that pid lives, sends the
query there instead of loading the index, which answers in milliseconds. Only the standard library
is used here: importing an HTTP client library would cost more than the whole round trip.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from models.errors import ClipsearchError

URL_ENV = "CLIPSEARCH_URL"
KEY_ENVS = ("CLIPSEARCH_READ_KEY", "CLIPSEARCH_API_KEY")


class ServiceError(ClipsearchError):
    """The service answered with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class Unreachable(ClipsearchError):
    """No server answered at the URL."""


def runtime_dir() -> Path:
    """Per-user: ``$XDG_RUNTIME_DIR/clipsearch``, else ``~/.cache/clipsearch/run``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "clipsearch" if base else Path.home() / ".cache" / "clipsearch" / "run"


def _announcement(index_dir: Path) -> Path:
    key = hashlib.sha256(str(Path(index_dir).expanduser().resolve()).encode()).hexdigest()[:24]
    return runtime_dir() / f"server-{key}.json"


def announce(index_dir: Path, url: str) -> Path:
    """Record that this process serves ``index_dir`` at ``url``; returns the file to withdraw."""
    path = _announcement(index_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "index": str(index_dir)}))
    tmp.replace(path)
    return path


def withdraw(path: Path) -> None:
    """Remove this process's announcement (not a newer server's for the same index)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_server(index_dir: Path) -> str | None:
    """The URL of a live server announced for ``index_dir``, if any."""
    path = _announcement(index_dir)
    try:
        info = json.loads(path.read_text())
        url, pid = str(info["url"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _alive(pid) else None


def post_json(url: str, route: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    """POST ``body`` to ``url + route`` and return the decoded answer.

    Raises ``Unreachable`` when nothing listens there and ``ServiceError`` for an error answer.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClipsearchError(f"{URL_ENV}={url!r} is not an http(s) URL")
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_type(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    key = next((os.environ[k] for k in KEY_ENVS if os.environ.get(k)), None)
    if key:
        headers["X-API-Key"] = key
    try:
        conn.request("POST", parts.path.rstrip("/") + route, json.dumps(body), headers)
        response = conn.getresponse()
        data = response.read()
    except (TimeoutError, ConnectionError, socket.gaierror) as e:
        raise Unreachable(f"no clipsearch server answers at {url}: {e}") from e
    finally:
        conn.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"detail": data[:300].decode(errors="replace")}
    if response.status >= 400:
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        code = answer.get("code", "error") if isinstance(answer, dict) else "error"
        raise ServiceError(response.status, str(code), str(detail))
    return answer

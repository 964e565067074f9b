"""Shared helpers of the service tests (no tests here): a real index of generated images built
with the tiny random-weight model, an app around it, and a server on a free port."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from PIL import Image
from synthetic import draw, make_dataset
from test_indexer_support import tiny_encoder

from app.main import create_app
from app.settings import Settings
from indexer import Index

API_KEY = "test-api-key"
TEXTS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "a purple cross on an orange background",
]


def build_index(root: Path, n: int = 16, texts: bool = True) -> Index:
    """An index of ``n`` generated 64 px images under ``root/images`` (and a few texts)."""
    make_dataset(root, n=n)
    index = Index.create(root / "index", encoder=tiny_encoder(), workers=0)
    index.add_images([root / "images"])
    if texts:
        index.add_texts(TEXTS)
    return index


def png_bytes(shape: str = "circle", fg: str = "red", bg: str = "blue", size: int = 64) -> bytes:
    buf = io.BytesIO()
    draw(shape, fg, bg, size).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size: int = 64) -> bytes:
    buf = io.BytesIO()
    draw("square", "green", "white", size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def settings_for(directory: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "index_dir": directory,
        "api_key": API_KEY,
        "reload_interval_s": 0.2,
        "max_k": 50,
        # Leave the test process's torch threads as they are (other tests share the process).
        "torch_threads": torch.get_num_threads(),
    }
    values.update(overrides)
    return Settings(**values)


def app_for(index: Index, **overrides: object):
    """The app serving an already open ``index`` (the test owns and closes it)."""
    return create_app(settings_for(index.directory, **overrides), index=index)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} not ready after {timeout} s: {last}")


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` under uvicorn in this process (for the browser test); yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=30)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def is_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """Assert ``response`` is the service's JSON error with ``status``; returns the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if code is not None:
        assert body.get("code") == code, body
    return body


def image_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))

"""Routes against a fake service, swapped in with FastAPI's ``dependency_overrides``: what a
route does with the service's answers and errors, without an index or a model."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.deps import get_service
from app.main import create_app
from app.settings import Settings
from indexer.errors import IndexBusyError, QueryError
from indexer.results import Hit


class FakeService:
    """Answers text searches from a fixed list, or raises what it was given."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, int, str, str | None]] = []

    async def search_text(self, text: str, k: int, target: str, path_prefix: str | None) -> list:
        self.calls.append((text, k, target, path_prefix))
        if self.error is not None:
            raise self.error
        return [Hit(7, 0.5, "image", "/photos/a.jpg", None, 4, 3)][:k]


def _client(tmp_path: Path, service: FakeService) -> TestClient:
    app = create_app(Settings(index_dir=tmp_path / "none", reload_interval_s=0))
    app.dependency_overrides[get_service] = lambda: service
    return TestClient(app)


def test_route_passes_the_query_through(tmp_path: Path) -> None:
    service = FakeService()
    body = {"query": "  a dog  ", "k": 3, "filter": {"path_prefix": "/photos"}}
    r = _client(tmp_path, service).post("/v1/search/text", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["url"].endswith("/v1/images/7")
    assert service.calls == [("a dog", 3, "images", "/photos")]


def test_library_errors_become_4xx(tmp_path: Path) -> None:
    for error, status in ((QueryError("bad query"), 422), (IndexBusyError("busy"), 409)):
        r = _client(tmp_path, FakeService(error)).post("/v1/search/text", json={"query": "x"})
        assert r.status_code == status and r.json()["detail"] == str(error), r.text

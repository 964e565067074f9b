"""``clipsearch search``: a positional query, the default index, output for pipes, and asking the
server announced for the index (or ``CLIPSEARCH_URL``) instead of loading it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app_support import app_for, build_index, free_port, serve_in_thread, wait_ready
from typer.testing import CliRunner

import app.cli
from app import remote
from indexer import Index
from indexer.location import user_index_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Announcements of this test only (never a real server of the user running the tests)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CLIPSEARCH_URL", raising=False)
    monkeypatch.delenv("CLIPSEARCH_INDEX", raising=False)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    idx = build_index(tmp_path_factory.mktemp("search-cli"), n=8)
    yield idx
    idx.close()


def _search(*args: str, env: dict[str, str] | None = None) -> list[dict]:
    result = CliRunner().invoke(app.cli.app, ["search", *args, "--json"], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    hits = json.loads(result.stdout)
    for h in hits:  # float32 scores, through JSON or not
        h["score"] = round(h["score"], 5)
    return hits


def test_default_index_comes_from_the_environment(index: Index) -> None:
    env = {"CLIPSEARCH_INDEX": str(index.directory)}
    hits = _search("a red circle", "-k", "3", env=env)
    assert len(hits) == 3 and all(h["kind"] == "image" for h in hits)
    info = CliRunner().invoke(app.cli.app, ["info", "--json"], env=env)
    assert json.loads(info.stdout)["images"] == 8


def test_the_user_default_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_index_dir() == tmp_path / "data" / "clipsearch" / "index"
    result = CliRunner().invoke(app.cli.app, ["info"])
    assert result.exit_code != 0
    assert str(tmp_path / "data" / "clipsearch" / "index") in str(result.exception)


def test_paths_output_pipes_one_path_a_line(index: Index) -> None:
    result = CliRunner().invoke(
        app.cli.app, ["search", "a red circle", "-i", str(index.directory), "-k", "4", "--paths"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(Path(line).is_file() for line in lines)
    texts = CliRunner().invoke(
        app.cli.app,
        ["search", "red", "-i", str(index.directory), "--target", "texts", "--paths", "-k", "2"],
    )
    assert texts.stdout.splitlines()[0] in (
        "a red circle on a blue background",
        "a green square on a white background",
        "a yellow triangle on a black background",
        "a purple cross on an orange background",
    )
    both = CliRunner().invoke(
        app.cli.app, ["search", "x", "-i", str(index.directory), "--paths", "--json"]
    )
    assert "pick one" in str(both.exception)


def test_asks_the_server_announced_for_the_index(index: Index, tmp_path: Path) -> None:
    local = _search("a red circle", "-i", str(index.directory), "-k", "5")
    elsewhere = tmp_path / "not-here"  # no index at all: only the server can answer
    with serve_in_thread(app_for(index)) as base:
        announced = remote.announce(elsewhere, base)
        assert remote.find_server(elsewhere) == base
        assert _search("a red circle", "-i", str(elsewhere), "-k", "5") == local
        image = Path(local[0]["path"])
        by_image = _search("--image", str(image), "-i", str(elsewhere), "-k", "1")
        assert by_image[0]["path"] == str(image)
        env = {"CLIPSEARCH_URL": base}
        assert _search("a red circle", "-i", str(tmp_path / "other"), "-k", "5", env=env) == local
        remote.withdraw(announced)
    assert not announced.exists() and remote.find_server(elsewhere) is None


def test_a_dead_server_is_named_or_skipped(index: Index, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app.cli.app, ["search", "dog", "-i", str(index.directory)], env={"CLIPSEARCH_URL": url}
    )
    assert isinstance(result.exception, remote.Unreachable)
    assert f"no clipsearch server answers at {url}" in str(result.exception)
    # An announcement left by a server that is gone (its pid no longer runs) is ignored ...
    path = remote.announce(index.directory, url)
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "pid": _dead_pid()}))
    assert remote.find_server(index.directory) is None
    # ... and one whose process lives but does not listen falls back to searching here.
    remote.announce(index.directory, url)
    assert len(_search("a red circle", "-i", str(index.directory), "-k", "2")) == 2


def test_server_errors_come_back_as_one_line(index: Index, tmp_path: Path) -> None:
    with serve_in_thread(app_for(index)) as base:
        result = CliRunner().invoke(
            app.cli.app, ["search", "x", "-k", "0"], env={"CLIPSEARCH_URL": base}
        )
    assert isinstance(result.exception, remote.ServiceError)
    assert result.exception.status == 422 and "k" in result.exception.detail


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_serve_announces_itself_until_it_stops(index: Index, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "-i", str(index.directory), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "CLIPSEARCH_RELOAD_INTERVAL_S": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=240)
        assert remote.find_server(index.directory) == f"http://127.0.0.1:{port}"
        hits = _search("a red circle", "-i", str(index.directory), "-k", "3")
        assert hits == _search("a red circle", "-i", str(index.directory), "-k", "3", "--local")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert remote.find_server(index.directory) is None
    assert not list(remote.runtime_dir().glob("server-*.json"))

"""The indexer commands' mistakes and surprises: one line that says what to do, nothing left
behind, no traceback, no usage box."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_indexer_support import write_images

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "clipsearch-tiny", "--pretrained", "none"]


def _clipsearch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_index_into_a_file(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 2)
    (tmp_path / "afile").write_text("x")
    proc = _clipsearch("index", str(tmp_path / "pics"), "--index", str(tmp_path / "afile"), *TINY)
    _one_line_error(proc, "is a file", "directory")


def test_batch_size_zero(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 2)
    proc = _clipsearch(
        "index", str(tmp_path / "pics"), "--index", str(tmp_path / "i"), "--batch-size", "0"
    )
    _one_line_error(proc, "--batch-size")
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize(
    "args",
    [["MISSING"], ["PICS", "--index-type", "bogus"]],
    ids=["missing folder", "bad index type"],
)
def test_a_failed_index_leaves_no_directory(tmp_path: Path, args: list[str]) -> None:
    write_images(tmp_path / "pics", 2)
    paths = {"MISSING": str(tmp_path / "nope"), "PICS": str(tmp_path / "pics")}
    argv = [paths.get(a, a) for a in args]
    proc = _clipsearch("index", *argv, "--index", str(tmp_path / "idx"), *TINY)
    _one_line_error(proc)
    assert not (tmp_path / "idx").exists()


def test_an_empty_folder_warns(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _clipsearch("index", str(tmp_path / "empty"), "--index", str(tmp_path / "idx"), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "warning: no image files found" in proc.stderr


def test_garbage_pretrained_file(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04garbage" * 100)
    proc = _clipsearch(
        "index", str(tmp_path / "pics"), "--index", str(tmp_path / "idx"),
        "--model", "clipsearch-tiny", "--pretrained", str(junk),
    )  # fmt: skip
    _one_line_error(proc, "junk.pt")
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_search_with_a_missing_image(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 2)
    idx = str(tmp_path / "idx")
    assert _clipsearch("index", str(tmp_path / "pics"), "--index", idx, *TINY).returncode == 0
    proc = _clipsearch("search", "--index", idx, "--image", str(tmp_path / "missing.jpg"))
    _one_line_error(proc, "missing.jpg", "no such file")
    assert "vanished" not in proc.stderr


def test_serve_on_a_used_port_fails_at_once(tmp_path: Path) -> None:
    write_images(tmp_path / "pics", 2)
    idx = str(tmp_path / "idx")
    assert _clipsearch("index", str(tmp_path / "pics"), "--index", idx, *TINY).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _clipsearch("serve", "--index", idx, "--port", str(port), timeout=60)
    _one_line_error(proc, str(port), "--port")

"""``clipsearch index``, ``index-text``, ``search`` and ``info`` end to end (a server for the
index is never announced here: ``search`` runs in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import make_dataset
from typer.testing import CliRunner

import app.cli
from indexer import ModelMismatchError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "clipsearch-tiny", "--pretrained", "none"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    captions = make_dataset(root / "data", n=20, size=40)
    (root / "data" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "data" / "images" / "skip_me").mkdir()
    (root / "data" / "images" / "skip_me" / "x.png").write_bytes(b"")
    idx = root / "idx"
    args = ["index", str(root / "data"), "--index", str(idx), *TINY, "--workers", "0"]
    result = CliRunner().invoke(app.cli.app, [*args, "-q", "--exclude", "skip_me"])
    assert result.exit_code == 0, result.output
    assert "indexed 20" in result.output and "skipped 1 (corrupt 1)" in result.output
    assert "removed 0" in result.output and "unchanged 0" in result.output
    result = CliRunner().invoke(app.cli.app, ["index-text", str(captions), "--index", str(idx)])
    assert result.exit_code == 0, result.output
    assert "indexed 20" in result.output
    return root, idx


def test_rerun_reports_unchanged(indexed: tuple[Path, Path]) -> None:
    root, idx = indexed
    result = CliRunner().invoke(
        app.cli.app, ["index", str(root / "data"), "--index", str(idx), "--json", "-x", "skip_me"]
    )
    # "-x" is not an option: typer refuses it before anything runs.
    assert result.exit_code != 0
    result = CliRunner().invoke(
        app.cli.app,
        ["index", str(root / "data"), "--index", str(idx), "--json", "--exclude", "skip_me"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["unchanged"], report["indexed"], report["skipped"]) == (20, 0, 1)
    assert report["skipped_files"][0]["reason"] == "corrupt"


def test_info_json(indexed: tuple[Path, Path]) -> None:
    _, idx = indexed
    result = CliRunner().invoke(app.cli.app, ["info", "--index", str(idx), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["images"] == 20 and info["texts"] == 20 and info["skipped"] == 1
    assert (info["model"], info["dim"], info["index_type"]) == ("clipsearch-tiny", 32, "flat")
    assert info["format_version"] == 1 and info["recall@10"] == 1.0
    assert info["sizes"]["total_bytes"] > 0
    text = CliRunner().invoke(app.cli.app, ["info", "--index", str(idx)]).output
    assert "images     20" in text and "IDMap2,Flat" in text and "corrupt 1" in text


def test_search_text_and_image(indexed: tuple[Path, Path]) -> None:
    root, idx = indexed
    result = CliRunner().invoke(
        app.cli.app, ["search", "a red circle", "--index", str(idx), "-k", "3", "--json", "--local"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 3 and all(h["kind"] == "image" and h["path"] for h in hits)
    image = next((root / "data" / "images").glob("0000_*.png"))
    result = CliRunner().invoke(
        app.cli.app,
        [
            "search",
            "-i",
            str(idx),
            "--image",
            str(image),
            "--target",
            "texts",
            "-k",
            "2",
            "--local",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 2 and "background" in result.output


def test_mismatch_and_errors(indexed: tuple[Path, Path]) -> None:
    root, idx = indexed
    result = CliRunner().invoke(
        app.cli.app,
        ["index", str(root / "data"), "--index", str(idx), "--model", "ViT-B-32"],
    )
    assert isinstance(result.exception, ModelMismatchError)
    result = CliRunner().invoke(app.cli.app, ["search", "--index", str(idx)])
    assert "give a text query or --image PATH" in str(result.exception)
    result = CliRunner().invoke(app.cli.app, ["search", "x", "--image", str(idx), "-i", str(idx)])
    assert "give a text query or --image PATH" in str(result.exception)


def test_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "info", "--index", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: no index at" in proc.stderr and "clipsearch index" in proc.stderr

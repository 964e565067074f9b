"""``clipsearch export``: vectors with ids and paths in clip-retrieval's layout, and back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_app_support import build_index
from typer.testing import CliRunner

import app.cli
from indexer import Index
from indexer.export import ExportError, export_index

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    idx = build_index(tmp_path_factory.mktemp("export"), n=6)
    yield idx
    idx.close()


def test_npy_round_trip(index: Index, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    result = CliRunner().invoke(app.cli.app, ["export", "-i", str(index.directory), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 6 images" in result.output
    vectors = np.load(out / "img_emb" / "img_emb_0.npy")
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pylist()
    assert vectors.shape == (6, index.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    for vector, row in zip(vectors, meta, strict=True):
        hit = index.search_vector(vector, k=1)[0]
        assert (hit.id, hit.path) == (row["id"], row["image_path"])
        assert len(row["sha256"]) == 64 and row["width"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # no temporary left


def test_parquet_holds_the_vectors(index: Index, tmp_path: Path) -> None:
    export_index(index, tmp_path / "pq", "parquet")
    rows = pq.read_table(tmp_path / "pq" / "img_emb" / "img_emb_0.parquet").to_pylist()
    assert len(rows) == 6 and len(rows[0]["embedding"]) == index.dim
    hit = index.search_vector(np.asarray(rows[3]["embedding"], np.float32), k=1)[0]
    assert hit.path == rows[3]["image_path"]


def test_export_refuses_to_overwrite_or_guess(index: Index, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_index(index, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="npy, parquet"):
        export_index(index, tmp_path / "x", "csv")

"""The library API the service uses: create/open, search (text, image, vector, batched), get,
remove, stats, errors, model mismatch, and FAISS files as a derived artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_indexer_support import TINY, tiny_encoder, write_images

from indexer import (
    FORMAT_VERSION,
    Hit,
    Index,
    IndexError_,
    IndexFormatError,
    IndexNotFoundError,
    IndexReport,
    ModelMismatchError,
    QueryError,
)
from models.errors import ClipsearchError
from models.weights import export_model_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Index, Path]:
    root = tmp_path_factory.mktemp("core")
    write_images(root / "photos" / "a", 12, start=0)
    write_images(root / "photos" / "b", 12, start=12)
    index = Index.create(root / "idx", encoder=tiny_encoder(), workers=0)
    report = index.add_images([root / "photos"])
    assert isinstance(report, IndexReport)
    assert (report.indexed, report.embedded, report.skipped_total) == (24, 24, 0)
    texts = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square")]
    assert index.add_texts([*texts, "a red circle", "  "]).indexed == 6
    yield index, root
    index.close()


def test_search_text_returns_hits_best_first(built: tuple[Index, Path]) -> None:
    index, _root = built
    hits = index.search_text("a red circle", k=5)
    assert len(hits) == 5
    assert all(isinstance(h, Hit) and h.kind == "image" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert os.path.isabs(h.path) and Path(h.path).is_file()
        assert h.text is None and (h.width, h.height) == (40, 40)
    assert len(index.search_text("a red circle", k=100)) == 24


def test_search_image_by_path_and_pil_agree(built: tuple[Index, Path]) -> None:
    index, root = built
    path = root / "photos" / "a" / "img_0003.png"
    by_path = index.search_image(path, k=3)
    by_pil = index.search_image(Image.open(path), k=3)
    assert by_path[0].path == str(path)  # an indexed image finds itself first
    assert by_path[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.id for h in by_path] == [h.id for h in by_pil]


def test_image_to_text_search(built: tuple[Index, Path]) -> None:
    index, root = built
    hits = index.search_image(root / "photos" / "a" / "img_0000.png", k=4, target="texts")
    assert len(hits) == 4
    assert all(h.kind == "text" and h.text and h.path is None for h in hits)


def test_search_vectors_is_the_batched_search_vector(built: tuple[Index, Path]) -> None:
    index, _ = built
    queries = index.encoder.encode_texts(["a red circle", "a blue square", "a green cross"])
    batched = index.search_vectors(queries, k=4)
    assert len(batched) == 3
    for q, hits in zip(queries, batched, strict=True):
        assert [h.id for h in index.search_vector(q, k=4)] == [h.id for h in hits]
    # Un-normalised input is normalised (cosine scores stay in [-1, 1]).
    scaled = index.search_vector(queries[0] * 7.0, k=4)
    assert [h.id for h in scaled] == [h.id for h in batched[0]]


def test_path_prefix_filters_images(built: tuple[Index, Path]) -> None:
    index, root = built
    prefix = str(root / "photos" / "b") + os.sep
    hits = index.search_text("a shape", k=50, path_prefix=prefix)
    assert len(hits) == 12
    assert all(h.path.startswith(prefix) for h in hits)
    assert index.search_text("a shape", k=5, path_prefix=str(root / "nowhere")) == []
    with pytest.raises(QueryError):
        index.search_text("a shape", target="texts", path_prefix=prefix)


def test_get_returns_the_item_with_zero_score(built: tuple[Index, Path]) -> None:
    index, _ = built
    hit = index.search_text("a red circle", k=1)[0]
    got = index.get(hit.id)
    assert got == Hit(hit.id, 0.0, "image", hit.path, None, 40, 40)
    text_hit = index.search_text("a red circle", k=1, target="texts")[0]
    assert index.get(text_hit.id).text == text_hit.text
    assert index.get(10**9) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.search_text("x", target="videos"),
        lambda ix: ix.search_text("x", k=0),
        lambda ix: ix.search_text("   "),
        lambda ix: ix.search_vector(np.zeros(5, np.float32)),
        lambda ix: ix.search_vectors(np.full((2, 32), np.nan, np.float32)),
        lambda ix: ix.search_image("/nonexistent/picture.jpg"),
    ],
)
def test_bad_queries_are_domain_value_errors(built: tuple[Index, Path], call) -> None:
    index, _ = built
    with pytest.raises(QueryError) as e:
        call(index)
    assert isinstance(e.value, ValueError) and isinstance(e.value, IndexError_)
    assert isinstance(e.value, ClipsearchError)


def test_stats_has_the_info_fields(built: tuple[Index, Path]) -> None:
    index, _ = built
    stats = index.stats()
    for key in ("images", "texts", "skipped", "model", "dim", "index_type", "format_version"):
        assert key in stats
    assert (stats["images"], stats["texts"], stats["skipped"]) == (24, 6, 0)
    assert (stats["model"], stats["dim"], stats["index_type"]) == ("clipsearch-tiny", 32, "flat")
    assert stats["format_version"] == FORMAT_VERSION
    assert stats["recall@10"] == 1.0
    assert stats["indexes"]["images"]["up_to_date"]
    json.dumps(stats)


def test_reopen_loads_the_manifest_encoder_and_keeps_ids(built: tuple[Index, Path]) -> None:
    index, _ = built
    before = [(h.id, h.path) for h in index.search_text("a blue cross", k=6)]
    with Index.open(index.directory) as again:
        assert again.encoder.provenance.model == "clipsearch-tiny"
        assert [(h.id, h.path) for h in again.search_text("a blue cross", k=6)] == before


def test_faiss_files_are_rebuilt_from_the_catalog(tmp_path: Path) -> None:
    write_images(tmp_path / "p", 10)
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0)
    index.add_images([tmp_path / "p"])
    before = [(h.id, round(h.score, 5)) for h in index.search_text("a circle", k=10)]
    index.close()
    faiss_files = list((tmp_path / "idx").glob("*.faiss"))
    assert faiss_files and not list((tmp_path / "idx").glob("*.tmp-*"))
    for f in faiss_files:
        f.unlink()
    with Index.open(tmp_path / "idx", encoder=tiny_encoder()) as again:
        assert [(h.id, round(h.score, 5)) for h in again.search_text("a circle", k=10)] == before
    assert not list((tmp_path / "idx").glob("images.*.faiss"))  # readers never write
    with Index.open_or_create(tmp_path / "idx", encoder=tiny_encoder()) as writer:
        writer.add_texts(["a caption"])
    assert list((tmp_path / "idx").glob("images.*.faiss"))  # the next writer checkpoints


def test_remove_drops_ids_everywhere(tmp_path: Path) -> None:
    write_images(tmp_path / "p", 8)
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0)
    index.add_images([tmp_path / "p"])
    ids = [h.id for h in index.search_text("a circle", k=8)]
    assert index.remove([*ids[:3], 10**9]) == 3
    left = {h.id for h in index.search_text("a circle", k=8)}
    assert left == set(ids[3:])
    assert index.get(ids[0]) is None
    assert index.stats()["images"] == 5
    index.close()


def test_model_mismatch_is_refused_with_a_way_out(tmp_path: Path) -> None:
    write_images(tmp_path / "p", 3)
    Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0).close()
    # Same architecture, weights from a file: a different weights hash.
    other_dir = export_model_dir(tiny_encoder().loaded.model, "clipsearch-tiny", tmp_path / "m")
    from models.encoder import Encoder

    other = Encoder.load("clipsearch-tiny", str(other_dir), device="cpu")
    with pytest.raises(ModelMismatchError) as e:
        Index.open(tmp_path / "idx", encoder=other)
    msg = str(e.value)
    assert "clipsearch-tiny" in msg and "--pretrained none" in msg and "new --index" in msg
    # ... and the command that re-indexes with the other model.
    assert f"clipsearch index FOLDER... --index {tmp_path / 'idx-clipsearch-tiny'}" in msg
    assert f"--model clipsearch-tiny --pretrained {other_dir}" in msg
    with pytest.raises(ModelMismatchError, match="ViT-B-32"):
        Index.open_or_create(tmp_path / "idx", model="ViT-B-32", pretrained="none")
    # The matching model opens fine, by name or by encoder.
    Index.open_or_create(tmp_path / "idx", *TINY, index_type=None).close()
    # create never opens: an index already there is refused.
    with pytest.raises(IndexError_, match="already holds an index"):
        Index.create(tmp_path / "idx", encoder=tiny_encoder())


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="clipsearch index"):
        Index.open(tmp_path / "nothing")
    Index.create(tmp_path / "idx", encoder=tiny_encoder()).close()
    manifest = tmp_path / "idx" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="upgrade"):
        Index.open(tmp_path / "idx", encoder=tiny_encoder())


def test_empty_index_searches_to_nothing(tmp_path: Path) -> None:
    with Index.create(tmp_path / "idx", encoder=tiny_encoder()) as index:
        assert index.search_text("anything") == []
        assert index.search_text("anything", target="texts") == []
        assert index.stats()["images"] == 0

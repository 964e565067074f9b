"""Incremental runs: only new or changed files are embedded, deleted ones dropped, renamed and
duplicate files reuse their vector by content hash, and ids are stable across runs and rebuilds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_indexer_support import assert_one_vector_per_file, tiny_encoder, write_images

from indexer import Index

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ids(index: Index) -> dict[str, int]:
    """path -> id of everything indexed."""
    hits = index.search_text("anything", k=1000)
    return {h.path: h.id for h in hits}


def _vector(index: Index, id: int) -> np.ndarray:
    _, vecs = index.catalog.vectors("image", [id])
    return vecs[0]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Index, Path]:
    pics = tmp_path / "pics"
    write_images(pics / "a", 6)
    write_images(pics / "b", 6, start=6)
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0)
    first = index.add_images([pics])
    assert (first.indexed, first.embedded) == (12, 12)
    yield index, pics
    index.close()


def test_rerun_embeds_nothing(setup: tuple[Index, Path]) -> None:
    index, pics = setup
    before = _ids(index)
    report = index.add_images([pics])
    assert (report.unchanged, report.indexed, report.embedded, report.removed) == (12, 0, 0, 0)
    assert _ids(index) == before


def test_new_changed_touched_deleted(setup: tuple[Index, Path]) -> None:
    index, pics = setup
    before = _ids(index)
    new = write_images(pics / "c", 2, start=40)
    changed = pics / "a" / "img_0002.png"
    old_vec = _vector(index, before[str(changed)])
    write_images(pics / "tmp", 1, start=60)[0].replace(changed)  # new content, same path
    touched = pics / "a" / "img_0003.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same content
    shutil.rmtree(pics / "tmp")
    deleted = pics / "b" / "img_0007.png"
    deleted.unlink()

    report = index.add_images([pics])
    assert report.embedded == 3  # two new files and the changed one
    assert (report.indexed, report.unchanged, report.removed) == (3, 10, 1)
    after = _ids(index)
    assert str(deleted) not in after and index.get(before[str(deleted)]) is None
    assert after[str(changed)] == before[str(changed)]  # the path keeps its id
    assert not np.allclose(_vector(index, after[str(changed)]), old_vec)
    assert after[str(touched)] == before[str(touched)]
    for p in new:
        assert str(p) in after
    # The changed file now finds itself by its new vector.
    assert index.search_vector(_vector(index, after[str(changed)]), k=1)[0].path == str(changed)
    good = sorted(p for p in pics.rglob("*.png"))
    assert_one_vector_per_file(index, good)
    # And a run after that is quiet again.
    assert index.add_images([pics]).embedded == 0


def test_rename_and_duplicate_reuse_vectors(setup: tuple[Index, Path]) -> None:
    index, pics = setup
    before = _ids(index)
    src = pics / "a" / "img_0001.png"
    moved = pics / "b" / "renamed.png"
    src.rename(moved)
    folder = pics / "a"
    folder.rename(pics / "a_moved")  # a whole folder renamed
    dup = pics / "dup_of_0008.png"
    shutil.copy(pics / "b" / "img_0008.png", dup)

    report = index.add_images([pics])
    assert report.embedded == 0  # nothing needs the encoder
    assert report.renamed == 6 and report.reused == 1 and report.removed == 0
    after = _ids(index)
    assert after[str(moved)] == before[str(src)]  # the id follows the file
    for i in (0, 2, 3, 4, 5):
        old = str(pics / "a" / f"img_{i:04d}.png")
        assert after[str(pics / "a_moved" / f"img_{i:04d}.png")] == before[old]
    assert after[str(dup)] not in before.values()  # a duplicate is a file of its own...
    np.testing.assert_array_equal(  # ...with the same vector
        _vector(index, after[str(dup)]), _vector(index, before[str(pics / "b" / "img_0008.png")])
    )
    assert_one_vector_per_file(index, sorted(pics.rglob("*.png")))


def test_ids_survive_rebuilds(setup: tuple[Index, Path]) -> None:
    index, _pics = setup
    before = _ids(index)
    index.rebuild()
    assert _ids(index) == before
    index.close()
    for f in index.directory.glob("*.faiss"):
        f.unlink()
    with Index.open(index.directory, encoder=tiny_encoder()) as again:
        assert _ids(again) == before


def test_other_roots_are_left_alone_and_excludes_apply(
    setup: tuple[Index, Path], tmp_path: Path
) -> None:
    index, pics = setup
    elsewhere = write_images(tmp_path / "elsewhere", 2, start=80)
    report = index.add_images([tmp_path / "elsewhere"])
    assert (report.indexed, report.removed) == (2, 0)  # the first root's files stay
    assert index.stats()["images"] == 14
    # Re-running a root with an exclude drops what it now leaves out.
    report = index.add_images([pics], exclude=["b"])
    assert report.removed == 6
    paths = set(_ids(index))
    assert {str(p) for p in elsewhere} <= paths
    assert not any("/b/" in p for p in paths)


def test_a_single_file_can_be_indexed(setup: tuple[Index, Path], tmp_path: Path) -> None:
    index, _ = setup
    one = write_images(tmp_path / "single", 1, start=90)[0]
    report = index.add_images([one])
    assert report.indexed == 1 and report.ids
    assert index.get(report.ids[0]).path == str(one)

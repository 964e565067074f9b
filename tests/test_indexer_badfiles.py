"""Every kind of bad file is skipped with its reason, counted, recorded, and never ends the run;
every image mode and format that is fine gets indexed upright and in RGB."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_indexer_support import tiny_encoder, write_images

import indexer.decode
import indexer.pipeline
from indexer import Index
from indexer.decode import REASONS, Skip, decode, read_bytes
from indexer.scan import scan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _jpeg_bytes(size: tuple[int, int] = (60, 40), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_good(folder: Path) -> list[Path]:
    """One file per format and awkward mode; all must be indexed."""
    folder.mkdir(parents=True)
    base = Image.new("RGB", (48, 32), (30, 120, 200))
    files = {}
    files["rgb.jpg"] = base
    files["palette.png"] = base.convert("P")
    files["rgba.png"] = base.convert("RGBA")
    files["la.png"] = base.convert("LA")
    files["cmyk.jpg"] = base.convert("CMYK")
    files["grey16.png"] = Image.fromarray(
        (np.arange(48 * 32).reshape(32, 48) * 40).astype(np.uint16)
    )
    files["photo.webp"] = base
    files["pic.bmp"] = base
    files["scan.tiff"] = base
    files["UPPER.JPEG"] = base
    out = []
    for name, image in files.items():
        image.save(folder / name)
        out.append(folder / name)
    # An animated GIF: the first frame is used.
    frames = [Image.new("P", (20, 20), i) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    out.append(folder / "anim.gif")
    # EXIF orientation 6 (rotate 90°): stored 60x40, upright 40x60.
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "rotated.jpg").write_bytes(_jpeg_bytes((60, 40), exif=exif.tobytes()))
    out.append(folder / "rotated.jpg")
    return out


def make_bad(folder: Path) -> dict[str, str]:
    """One file per bad kind: name -> expected reason."""
    folder.mkdir(parents=True)
    expected = {}
    (folder / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) - 30])
    expected["truncated.png"] = "truncated"
    (folder / "notes.png").write_text("this is not a picture\n")
    expected["notes.png"] = "not_an_image"
    Image.new("RGB", (300, 300)).save(folder / "bomb.png")  # 90,000 px; the cap is 20,000
    expected["bomb.png"] = "decompression_bomb"
    os.symlink(folder / "missing.jpg", folder / "dangling.jpg")
    expected["dangling.jpg"] = "broken_symlink"
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    expected["loop_a.jpg"] = expected["loop_b.jpg"] = "symlink_loop"
    os.symlink(folder, folder / "back_to_parent")  # a directory loop
    expected["back_to_parent"] = "symlink_loop"
    # Its own size, so no good file shares its content hash (a real unreadable file cannot be
    # hashed either; the fake below only denies the decode).
    (folder / "locked.jpg").write_bytes(_jpeg_bytes((61, 41)))
    expected["locked.jpg"] = "permission_denied"  # faked below: tests run as root
    return expected


@pytest.fixture
def fake_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    real = indexer.decode._open

    def _open(path: str):
        if os.path.basename(path) == "locked.jpg":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(indexer.decode, "_open", _open)
    # The fake lives in this process: workers must be forked from it, not started by a fork
    # server, which the pipeline prefers once other tests have left threads running.
    monkeypatch.setattr(indexer.pipeline.threading, "active_count", lambda: 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_recorded_and_counted(
    tmp_path: Path, fake_locked: None, workers: int
) -> None:
    good = make_good(tmp_path / "pics" / "good")
    expected = make_bad(tmp_path / "pics" / "bad")
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), max_pixels=20_000)
    # batch_size 4 puts the bad files in batches of their own and mixed with good ones; with
    # workers=2 this runs through forked DataLoader workers (the fake open survives the fork).
    report = index.add_images([tmp_path / "pics"], batch_size=4, workers=workers)

    assert report.indexed == len(good)
    by_path = {Path(s.path).name: s.reason for s in report.skipped_files}
    assert by_path == expected
    want_counts: dict[str, int] = {}
    for reason in expected.values():
        want_counts[reason] = want_counts.get(reason, 0) + 1
    assert dict(report.skipped) == want_counts
    assert all(reason in REASONS for reason in expected.values())
    summary = report.summary()
    for reason in want_counts:
        assert reason in summary

    with sqlite3.connect(tmp_path / "idx" / "catalog.sqlite3") as conn:
        rows = dict(
            conn.execute("SELECT path, reason FROM items WHERE status = 'skipped'").fetchall()
        )
        sizes = dict(
            conn.execute(
                "SELECT path, width || 'x' || height FROM items WHERE status = 'ok'"
            ).fetchall()
        )
    assert {Path(p).name: r for p, r in rows.items()} == expected
    assert sizes[str(tmp_path / "pics" / "good" / "rotated.jpg")] == "40x60"
    stats = index.stats()
    assert stats["skipped"] == len(expected)
    assert stats["skipped_by_reason"] == dict(sorted(want_counts.items()))
    assert stats["images"] == len(good)

    # A second run re-examines the bad files (one may have been fixed) and still skips them.
    again = index.add_images([tmp_path / "pics"], batch_size=4, workers=workers)
    assert (again.unchanged, again.indexed, again.skipped_total) == (len(good), 0, len(expected))
    index.close()


def test_fixed_file_is_indexed_and_a_broken_one_loses_its_vector(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    write_images(pics, 4)
    (pics / "later.png").write_bytes(b"")
    index = Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0)
    assert index.add_images([pics]).skipped == {"empty": 1}
    write_images(pics, 1, start=50)[0].rename(pics / "later.png")
    broken = pics / "img_0001.png"
    noise = write_images(tmp_path / "noise", 1, start=300)[0].read_bytes()
    broken.write_bytes(noise[: len(noise) // 2])
    report = index.add_images([pics])
    assert report.indexed == 1 and dict(report.skipped) == {"truncated": 1}
    assert {h.path for h in index.search_text("x", k=10)} == {
        str(p) for p in (pics / "img_0000.png", pics / "img_0002.png", pics / "img_0003.png")
    } | {str(pics / "later.png")}
    index.close()


def test_real_permission_error_when_not_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads chmod 000 files; the faked PermissionError covers this path")
    path = tmp_path / "locked.jpg"
    path.write_bytes(_jpeg_bytes())
    path.chmod(0)
    try:
        with pytest.raises(Skip) as e:
            read_bytes(str(path))
        assert e.value.reason == "permission_denied"
    finally:
        path.chmod(0o644)


def test_pixel_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_MAX_PIXELS", "1000")
    cap = indexer.decode.resolve_max_pixels(None)
    assert cap == 1000
    buf = io.BytesIO()
    Image.new("RGB", (40, 40)).save(buf, "PNG")
    with pytest.raises(Skip, match="decompression_bomb"):
        decode(buf.getvalue(), cap)
    assert decode(buf.getvalue(), 2000).image.size == (40, 40)


def test_scan_excludes_and_skips_the_index_dir(tmp_path: Path) -> None:
    write_images(tmp_path / "keep", 2)
    write_images(tmp_path / "thumbs", 2)
    write_images(tmp_path / "idx", 1)  # an index inside the tree is never indexed
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    found = scan([tmp_path], exclude=["thumbs"], skip_dirs=[tmp_path / "idx"])
    assert sorted(Path(f.path).relative_to(tmp_path).as_posix() for f in found.files) == [
        "keep/img_0000.png",
        "keep/img_0001.png",
    ]
    found = scan([tmp_path], exclude=["*_0001.png"], skip_dirs=[tmp_path / "idx"])
    assert len(found.files) == 2


class _Boom(BaseException):
    pass


def test_decode_thread_hands_errors_over_and_stops_early(tmp_path: Path) -> None:
    from indexer.pipeline import DecodeDataset, batches

    paths = [str(p) for p in write_images(tmp_path, 12)]
    encoder = tiny_encoder()
    calls: list[int] = []

    def preprocess(image: Image.Image):
        calls.append(1)
        if len(calls) == 9:
            raise _Boom  # not an Exception: the dataset does not turn it into a skip reason
        return encoder.preprocess(image)

    with pytest.raises(_Boom):
        list(batches(DecodeDataset(paths, preprocess, 10**8, 32), batch_size=4, workers=0))
    # A consumer that stops early leaves no thread behind.
    before = threading.active_count()
    gen = batches(DecodeDataset(paths, encoder.preprocess, 10**8, 32), batch_size=4, workers=0)
    assert len(next(gen).items) == 4
    gen.close()
    assert threading.active_count() == before

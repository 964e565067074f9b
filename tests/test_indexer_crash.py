"""Crash safety: an indexing run killed with SIGKILL (mid-batch, or while writing FAISS), then
rerun, ends with exactly one vector per good file; the rerun resumes instead of restarting."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_indexer_support import assert_one_vector_per_file, tiny_encoder, write_images

from indexer import Index, IndexBusyError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys, time, warnings
warnings.simplefilter("ignore")
index_dir, pics, slow, workers, die_in_faiss_write = sys.argv[1:6]
from models.encoder import Encoder
from indexer import Index
import indexer.faiss_index as fx
encoder = Encoder.load("clipsearch-tiny", "none", device="cpu")
real = encoder.encode_image_tensor
def slow_encode(batch):
    time.sleep(float(slow))  # widen the window between batch commits
    return real(batch)
encoder.encode_image_tensor = slow_encode
if die_in_faiss_write == "1":
    real_write = fx.faiss.write_index
    def half_write(index, path):
        if index.ntotal == 0:  # the empty index written at creation
            return real_write(index, path)
        with open(path, "wb") as f:
            f.write(b"half a faiss file")
        os.kill(os.getpid(), 9)
    fx.faiss.write_index = half_write
index = Index.open_or_create(index_dir, encoder=encoder, batch_size=4, workers=int(workers))
index.add_images([pics])
print("finished", flush=True)
"""


def _start(index_dir: Path, pics: Path, slow: float, workers: int, die_in_write: bool = False):
    die = "1" if die_in_write else "0"
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(index_dir), str(pics), str(slow), str(workers), die],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: SIGKILL reaches the decode workers too
    )


def _committed(index_dir: Path) -> int:
    try:
        with sqlite3.connect(index_dir / "catalog.sqlite3", timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _kill(proc: subprocess.Popen, group: bool = True) -> None:
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(index_dir: Path, proc: subprocess.Popen, n: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _committed(index_dir) if (index_dir / "catalog.sqlite3").exists() else 0
        if done >= n:
            return done
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    _kill(proc)
    raise AssertionError("the child never committed a batch")


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    pics = tmp_path / "pics"
    good = write_images(pics / "x", 30) + write_images(pics / "y", 30, start=30)
    (pics / "y" / "empty.png").write_bytes(b"")
    (pics / "x" / "fake.jpg").write_text("not an image")
    return pics, good


def test_sigkill_mid_run_then_rerun(tmp_path: Path, folder: tuple[Path, list[Path]]) -> None:
    pics, good = folder
    index_dir = tmp_path / "idx"
    proc = _start(index_dir, pics, slow=0.3, workers=2)
    done = _wait_for(index_dir, proc, 8)  # two batches of four committed
    # A second writer is refused while the first holds the lock.
    with Index.open(index_dir, encoder=tiny_encoder()) as other:
        with pytest.raises(IndexBusyError, match="another writer"):
            other.add_images([pics])
        # Readers are not blocked; they see whole committed batches.
        other.reload_if_changed()
        assert done <= other._faiss.state("image").ntotal <= len(good)
    _kill(proc, group=False)  # only the main process: its orphaned workers must not hold the lock
    done = _committed(index_dir)
    assert 8 <= done < len(good), "the kill should land mid-run"

    with Index.open(index_dir, encoder=tiny_encoder(), workers=0) as index:
        report = index.add_images([pics])
        assert report.unchanged == done  # resumed, not restarted
        assert report.embedded == len(good) - done
        assert dict(report.skipped) == {"empty": 1, "not_an_image": 1}
        assert_one_vector_per_file(index, good)


def test_repeated_kills_at_random_moments(tmp_path: Path, folder: tuple[Path, list[Path]]) -> None:
    pics, good = folder
    index_dir = tmp_path / "idx"
    for delay in (0.0, 0.6):
        proc = _start(index_dir, pics, slow=0.15, workers=0)
        _wait_for(index_dir, proc, _committed(index_dir) + 1)
        time.sleep(delay)
        _kill(proc)
    with Index.open(index_dir, encoder=tiny_encoder(), workers=0) as index:
        index.add_images([pics])
        assert_one_vector_per_file(index, good)


def test_sigkill_while_writing_faiss(tmp_path: Path, folder: tuple[Path, list[Path]]) -> None:
    pics, good = folder
    index_dir = tmp_path / "idx"
    proc = _start(index_dir, pics, slow=0.0, workers=0, die_in_write=True)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert list(index_dir.glob("images.*.faiss.tmp-*")), "it should die mid-write"
    assert len(list(index_dir.glob("images.*.faiss"))) == 1  # only the empty one of creation
    # Every batch was committed before FAISS: a reader rebuilds from the catalog.
    with Index.open(index_dir, encoder=tiny_encoder(), workers=0) as index:
        assert_one_vector_per_file(index, good)
        report = index.add_images([pics])
        assert report.embedded == 0 and report.unchanged == len(good)
    assert not list(index_dir.glob("*.tmp-*"))
    assert list(index_dir.glob("images.*.faiss"))

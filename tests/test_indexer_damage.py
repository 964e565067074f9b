"""Damaged, lost, read-only and full index directories: each is opened for reading when it can
be, rebuilt when a writer can, and otherwise refused with a message that says what to do."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_indexer_support import garble_catalog_pages, tiny_encoder, write_images
from typer.testing import CliRunner

import app.cli
from indexer import Index, IndexError_, IndexFormatError
from models.errors import ClipsearchError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of 12 images and 3 texts, closed; tests work on copies."""
    root = tmp_path_factory.mktemp("damage")
    write_images(root / "pics", 12)
    with Index.create(root / "idx", encoder=tiny_encoder(), workers=0) as index:
        index.add_images([root / "pics"])
        index.add_texts(["a red circle", "a blue square", "a green cross"])
    return root / "idx"


@pytest.fixture
def idx(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "idx"
    shutil.copytree(pristine, target)
    return target


def _listing(directory: Path) -> dict[str, int]:
    """Files and sizes, less SQLite's own shared-memory files (which readers may create)."""
    return {
        p.name: p.stat().st_size
        for p in directory.iterdir()
        if not p.name.endswith(("-wal", "-shm"))
    }


def _newest(directory: Path, stem: str = "images") -> Path:
    return max(directory.glob(f"{stem}.*.faiss"), key=lambda p: int(p.name.split(".")[1]))


def _cli(*args: str) -> tuple[int, str]:
    """Exit status and output, as ``main`` reports a library error: one line, status 2."""
    result = CliRunner().invoke(app.cli.app, list(args))
    if isinstance(result.exception, ClipsearchError):
        return 2, f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# -- readers never write ---------------------------------------------------------------------


def test_a_reader_of_a_stale_index_writes_nothing(idx: Path) -> None:
    for p in idx.glob("*.faiss"):
        p.unlink()  # stale: a reader rebuilds in memory
    before = _listing(idx)
    with Index.open(idx, encoder=tiny_encoder()) as index:
        assert len(index.search_text("a red circle", k=3)) == 3
    assert _listing(idx) == before


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || exit 1"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _unshare_works(), reason="needs unprivileged mount namespaces (unshare -rm)"
)


def _run_read_only(directory: Path, *cli: str) -> subprocess.CompletedProcess:
    """``clipsearch CLI...`` with ``directory`` bind-mounted read-only (a real EROFS)."""
    script = (
        f'mount --bind "{directory}" "{directory}" && '
        f'mount -o remount,bind,ro "{directory}" && exec "$0" -m app.cli "$@"'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, sys.executable, *cli],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_mounts
def test_info_and_search_on_a_read_only_filesystem(idx: Path) -> None:
    for p in idx.glob("catalog.sqlite3-*"):
        p.unlink()  # as a cleanly closed catalog leaves it
    info = _run_read_only(idx, "info", "--index", str(idx), "--json")
    assert info.returncode == 0, info.stderr
    assert '"images": 12' in info.stdout
    found = _run_read_only(idx, "search", "a red circle", "--index", str(idx), "-k", "2")
    assert found.returncode == 0, found.stderr
    assert len([line for line in found.stdout.splitlines() if "#" in line]) == 2


# -- a lost catalog --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "empty"])
def test_a_lost_catalog_is_refused_and_nothing_is_written(idx: Path, how: str) -> None:
    catalog = idx / "catalog.sqlite3"
    for p in idx.glob("catalog.sqlite3-*"):
        p.unlink()
    if how == "deleted":
        catalog.unlink()
    else:
        catalog.write_bytes(b"")
    before = _listing(idx)
    with pytest.raises(IndexFormatError, match=r"catalog.*(missing|empty).*backup"):
        Index.open(idx, encoder=tiny_encoder())
    code, out = _cli("info", "--index", str(idx))
    assert code == 2 and "backup" in out and "Traceback" not in out
    with pytest.raises(IndexFormatError, match="backup"):
        Index.open_or_create(idx, encoder=tiny_encoder())
    assert _listing(idx) == before


def test_a_catalog_older_than_the_checkpoints_is_refused(idx: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-catalog"
    shutil.copy(idx / "catalog.sqlite3", old)
    with Index.open(idx, encoder=tiny_encoder()) as index:
        index.add_texts(["a new caption"])
    shutil.copy(old, idx / "catalog.sqlite3")  # restored from an older backup
    for p in idx.glob("catalog.sqlite3-*"):
        p.unlink()
    with pytest.raises(IndexFormatError, match=r"older than.*delete the checkpoint"):
        Index.open(idx, encoder=tiny_encoder())


# -- a damaged FAISS checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_checkpoint_is_reported_and_rebuilt(idx: Path, how: str) -> None:
    path = _newest(idx)
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(64) + data[middle + 64 :])

    code, out = _cli("info", "--index", str(idx), "--json")
    assert code == 0, out
    assert "damaged" in out
    code, out = _cli("info", "--index", str(idx))
    assert code == 0 and "checkpoint DAMAGED" in out, out
    # A reader searches (rebuilt in memory) and writes nothing.
    before = _listing(idx)
    with Index.open(idx, encoder=tiny_encoder()) as index:
        assert len(index.search_text("a red circle", k=12)) == 12
        assert "images" in index.stats()["damaged"]
    assert _listing(idx) == before
    # A writer replaces it.
    with Index.open_or_create(idx, encoder=tiny_encoder()) as index:
        index.rebuild()
    with Index.open(idx, encoder=tiny_encoder(), lazy=True) as index:
        stats = index.stats()
        assert stats["damaged"] == {}
        assert stats["indexes"]["images"]["vectors"] == 12


# -- a corrupt catalog -----------------------------------------------------------------------


def test_a_garbled_catalog_header_is_a_one_line_error(idx: Path) -> None:
    catalog = idx / "catalog.sqlite3"
    data = bytearray(catalog.read_bytes())
    data[:100] = os.urandom(100)
    catalog.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"catalog.*damaged"):
        Index.open(idx, encoder=tiny_encoder())
    code, out = _cli("info", "--index", str(idx))
    assert code == 2 and "damaged" in out and "Traceback" not in out


def test_a_garbled_catalog_page_is_a_domain_error(idx: Path) -> None:
    garble_catalog_pages(idx / "catalog.sqlite3")
    with pytest.raises(IndexFormatError, match=r"catalog.*damaged"):  # noqa: SIM117
        with Index.open(idx, encoder=tiny_encoder()) as index:  # opening may find it already
            index.search_text("a red circle", k=12)
            index.check()


# -- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_while_committing_keeps_what_was_committed(
    idx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pics = write_images(tmp_path / "more", 40, start=12)
    with Index.open(idx, encoder=tiny_encoder(), workers=0, batch_size=4) as index:
        conn = index.catalog.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # room for a few batches only
        with pytest.raises(IndexError_, match=r"disk.*full.*free"):
            index.add_images([tmp_path / "more"])
        kept = index.catalog.counts()["images"]
    assert 12 <= kept < 12 + len(pics)
    with Index.open(idx, encoder=tiny_encoder(), workers=0) as index:
        index.add_images([tmp_path / "more"])
        assert index.catalog.counts()["images"] == 12 + len(pics)


def test_a_full_disk_while_checkpointing_is_a_clear_error(
    idx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    def full(*_a: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write_images(tmp_path / "more", 3, start=12)
    monkeypatch.setattr(faiss, "write_index", full)
    with (
        Index.open(idx, encoder=tiny_encoder(), workers=0) as index,
        pytest.raises(IndexError_, match=r"disk.*full.*free"),
    ):
        index.add_images([tmp_path / "more"])
    monkeypatch.undo()
    assert not list(idx.glob("*.tmp-*"))
    with Index.open(idx, encoder=tiny_encoder()) as index:  # the rows were committed
        assert index.catalog.counts()["images"] == 15

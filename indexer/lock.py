"""One writer per index directory: flock(2) on ``write.lock`` and a lock for this process's threads.

Readers never take it (SQLite WAL and immutable FAISS snapshots keep them consistent).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import IndexBusyError, read_only
from indexer.layout import LOCK

# flock(2) locks belong to the open file, which a fork shares: a decoding worker forked while the
# lock is held would keep the index locked after its parent is killed. Children close their copies.
_held_fds: set[int] = set()


def _close_inherited() -> None:
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_inherited)


class WriteLock:
    """Re-entrant within one ``Index`` object; exclusive across objects and processes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.path.read_text().strip() or 0)
            if pid:
                return f" (pid {pid})"
        return ""

    def try_acquire(self, timeout: float = 0.0) -> bool:
        acquired = (
            self._thread_lock.acquire(timeout=timeout)
            if timeout > 0
            else self._thread_lock.acquire(blocking=False)
        )
        if not acquired:
            return False
        if self._depth:
            self._depth += 1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._thread_lock.release()
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise read_only(self.path.parent) from e
            raise
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    self._thread_lock.release()
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _held_fds.add(fd)
        self._depth = 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            _held_fds.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    @contextlib.contextmanager
    def hold(self, timeout: float = 0.0) -> Iterator[None]:
        if not self.try_acquire(timeout):
            raise IndexBusyError(
                f"another writer{self._holder()} is updating the index in {self.path.parent}; "
                "wait for it to finish and run again"
            )
        try:
            yield
        finally:
            self.release()

"""Finding image files: recursive walk, excludes, symlinks followed with loop detection.

Everything found is a :class:`Found`; files that cannot even be stat'ed (broken symlink, symlink
loop, unreadable directory) carry their skip reason already, so they are recorded like any other
bad file. The walk itself never raises for a bad entry.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import ScanError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)


@dataclass(frozen=True)
class Found:
    """A candidate file: its absolute path (symlinks not resolved) and stat, or a skip reason."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    reason: str | None = None
    detail: str = ""


@dataclass
class ScanResult:
    roots: list[str]
    files: list[Found] = field(default_factory=list)
    unreadable_dirs: list[str] = field(default_factory=list)

    def protected(self, path: str) -> bool:
        """Whether ``path`` lies under a directory that could not be listed this time."""
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.unreadable_dirs)


def _reason_for(err: OSError, is_link: bool) -> tuple[str, str]:
    if err.errno == errno.ELOOP:
        return "symlink_loop", "too many levels of symbolic links"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied", str(err.strerror or err)
    if err.errno == errno.ENOENT and is_link:
        return "broken_symlink", f"points to {_readlink(err.filename)}"
    return "unreadable", str(err.strerror or err)


def _readlink(path: str | None) -> str:
    try:
        return os.readlink(path) if path else "?"
    except OSError:
        return "?"


def _printable(path: str) -> str | None:
    """Paths SQLite can store (file names that are not valid UTF-8 cannot)."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


class _Walker:
    def __init__(self, exclude: Sequence[str], skip_dirs: Iterable[Path]) -> None:
        self.exclude = list(exclude)
        self.skip = set()
        for d in skip_dirs:
            try:
                st = os.stat(d)
                self.skip.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        self.result: ScanResult | None = None

    def excluded(self, path: str, root: str) -> bool:
        if not self.exclude:
            return False
        rel = os.path.relpath(path, root)
        name = os.path.basename(path)
        return any(
            fnmatch.fnmatchcase(rel, g)
            or fnmatch.fnmatchcase(name, g)
            or fnmatch.fnmatchcase(path, g)
            for g in self.exclude
        )

    def add(self, found: Found) -> None:
        assert self.result is not None
        bad = _printable(found.path)
        if bad is not None:
            found = Found(bad, reason="unreadable", detail="file name is not valid UTF-8")
        self.result.files.append(found)

    def walk(self, root: str) -> None:
        try:
            st = os.stat(root)
        except OSError as e:
            if os.path.islink(root):
                reason, detail = _reason_for(e, True)
                self.add(Found(root, reason=reason, detail=detail))
                return
            raise ScanError(f"cannot index {root}: {e.strerror or e}") from e
        if not stat.S_ISDIR(st.st_mode):
            self.add(Found(root, st.st_size, st.st_mtime_ns))
            return
        # Depth-first; each entry carries the (dev, inode) of the directories above it.
        stack: list[tuple[str, frozenset[tuple[int, int]]]] = [
            (root, frozenset({(st.st_dev, st.st_ino)}))
        ]
        while stack:
            directory, ancestors = stack.pop()
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                reason, detail = _reason_for(e, False)
                log.warning("cannot list %s: %s", directory, detail)
                assert self.result is not None
                self.result.unreadable_dirs.append(directory)
                self.add(Found(directory, reason=reason, detail=f"directory: {detail}"))
                continue
            subdirs = []
            for entry in entries:
                path = entry.path
                if self.excluded(path, root):
                    continue
                is_link = entry.is_symlink()
                has_ext = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                try:
                    est = os.stat(path) if is_link else entry.stat(follow_symlinks=False)
                except OSError as e:
                    reason, detail = _reason_for(e, is_link)
                    # A dangling or looping link is reported when it looks like an image, or when
                    # it loops (a directory link that loops is the classic case).
                    if has_ext or reason == "symlink_loop":
                        self.add(Found(path, reason=reason, detail=detail))
                    continue
                if stat.S_ISDIR(est.st_mode):
                    key = (est.st_dev, est.st_ino)
                    if key in self.skip:
                        continue
                    if key in ancestors:
                        self.add(
                            Found(
                                path,
                                reason="symlink_loop",
                                detail=f"links back to {os.path.realpath(path)}",
                            )
                        )
                        continue
                    subdirs.append((path, ancestors | {key}))
                elif stat.S_ISREG(est.st_mode) and has_ext:
                    self.add(Found(path, est.st_size, est.st_mtime_ns))
            stack.extend(reversed(subdirs))


def scan(
    paths: Sequence[str | Path], exclude: Sequence[str] = (), skip_dirs: Iterable[Path] = ()
) -> ScanResult:
    """Walk files and folders; ``exclude`` globs match the path relative to its root, the name,
    or the absolute path; ``skip_dirs`` (the index directory itself) are never entered."""
    roots = [os.path.abspath(os.path.expanduser(str(p))) for p in paths]
    walker = _Walker(exclude, skip_dirs)
    walker.result = ScanResult(roots=roots)
    seen: set[str] = set()
    for root in roots:
        walker.walk(root)
    files = []
    for f in walker.result.files:  # overlapping roots must not yield a file twice
        if f.path not in seen:
            seen.add(f.path)
            files.append(f)
    walker.result.files = files
    return walker.result

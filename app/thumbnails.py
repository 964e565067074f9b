"""Thumbnails made on first request and kept in a bounded in-memory LRU.

The key includes the file's mtime and size, so a replaced file never serves a stale thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

from models.images import open_rgb


class ThumbnailCache:
    """JPEG thumbnails by (path, mtime, size, edge); thread-safe."""

    def __init__(self, max_items: int = 2048) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path, edge: int) -> tuple[bytes, str]:
        """The thumbnail's bytes and an ETag for it; raises OSError if the file is unreadable."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size, edge)
        # A content hash, not hash(): the same ETag from every replica and after restarts.
        etag = '"' + hashlib.sha1(repr(key).encode()).hexdigest()[:20] + '"'
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return data, etag
        data = make_thumbnail(path, edge)
        with self._lock:
            self.misses += 1
            if self.max_items > 0:
                self._items[key] = data
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return data, etag


def make_thumbnail(path: Path, edge: int) -> bytes:
    """A JPEG whose longer side is at most ``edge`` pixels."""
    image = open_rgb(path, draft_size=edge)
    image.thumbnail((edge, edge))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()

"""Errors the indexer raises on purpose; every message says what happened and what to do.

All derive from :class:`models.errors.ClipsearchError`, so the CLI and the service translate them
at the edge. :class:`QueryError` is also a ``ValueError``: a bad request (unknown target, k < 1,
empty query, a vector of the wrong shape, an undecodable query image): the service answers 4xx.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import ClipsearchError


class IndexError_(ClipsearchError):
    """Base of every index error."""


class IndexNotFoundError(IndexError_):
    """The directory holds no index (no manifest)."""


class IndexFormatError(IndexError_):
    """The directory was written by an incompatible clipsearch, or its files are damaged."""


class ModelMismatchError(IndexError_):
    """The encoder is not the one the index was built with; mixing them would be meaningless."""


class IndexBusyError(IndexError_):
    """Another writer (process or thread) holds the index's write lock."""


class QueryError(IndexError_, ValueError):
    """A malformed search request; the caller's fault, never the index's."""


class ScanError(IndexError_):
    """A path given to index does not exist."""


class IndexDamagedError(IndexFormatError):
    """A file of the index is unreadable (a corrupt catalog); the message says how to recover."""


class DiskFullError(IndexError_):
    """The disk holding the index is full; what was committed before stays committed."""


class ReadOnlyIndexError(IndexError_):
    """A write was asked of an index on a read-only filesystem or without write permission."""


def read_only(directory: Path) -> ReadOnlyIndexError:
    return ReadOnlyIndexError(
        f"{directory} is read-only: it can be searched but not changed; to change it, copy it "
        "somewhere writable or remount the volume read-write"
    )

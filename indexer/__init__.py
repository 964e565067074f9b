"""Bulk-indexes image folders and text corpora into FAISS with a durable, incremental catalog.

``import indexer`` is cheap: ``Index`` (FAISS; torch only once it embeds) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from indexer.errors import (
    DiskFullError,
    IndexBusyError,
    IndexDamagedError,
    IndexError_,
    IndexFormatError,
    IndexNotFoundError,
    ModelMismatchError,
    QueryError,
    ReadOnlyIndexError,
    ScanError,
)
from indexer.layout import FORMAT_VERSION
from indexer.results import Hit, IndexReport, Skipped

if TYPE_CHECKING:
    from indexer.index import Index

__all__ = [
    "FORMAT_VERSION",
    "DiskFullError",
    "Hit",
    "Index",
    "IndexBusyError",
    "IndexDamagedError",
    "IndexError_",
    "IndexFormatError",
    "IndexNotFoundError",
    "IndexReport",
    "ModelMismatchError",
    "QueryError",
    "ReadOnlyIndexError",
    "ScanError",
    "Skipped",
]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from indexer.index import Index

        return Index
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")

"""Bulk-indexes image folders and text corpora into FAISS with a durable, incremental catalog."""

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
from indexer.index import Index
from indexer.layout import FORMAT_VERSION
from indexer.results import Hit, IndexReport, Skipped

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

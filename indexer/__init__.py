"""Bulk-indexes image folders and text corpora into FAISS with a durable, incremental catalog."""

from indexer.errors import (
    IndexBusyError,
    IndexError_,
    IndexFormatError,
    IndexNotFoundError,
    ModelMismatchError,
    QueryError,
    ScanError,
)
from indexer.index import Index
from indexer.layout import FORMAT_VERSION
from indexer.results import Hit, IndexReport, Skipped

__all__ = [
    "FORMAT_VERSION",
    "Hit",
    "Index",
    "IndexBusyError",
    "IndexError_",
    "IndexFormatError",
    "IndexNotFoundError",
    "IndexReport",
    "ModelMismatchError",
    "QueryError",
    "ScanError",
    "Skipped",
]

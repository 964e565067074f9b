"""Reading a text corpus (captions, labels or tags) for ``index-text``: CSV/TSV or one per line."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from indexer.errors import IndexError_

TEXT_COLUMNS = ("caption", "text", "label", "tag", "tags", "title", "description", "name")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_corpus(path: str | Path, column: str | None = None) -> list[str]:
    """The texts of ``path``: a CSV/TSV column (``column``, else the first of TEXT_COLUMNS in the
    header, else the only column), or every non-blank line of any other file."""
    path = Path(path).expanduser()
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise IndexError_(f"text corpus not found: {path}") from None
    except UnicodeDecodeError as e:
        raise IndexError_(f"{path} is not UTF-8 text ({e}); convert it first") from None
    except OSError as e:
        raise IndexError_(f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix.lower() not in (".csv", ".tsv"):
        if column is not None:
            raise IndexError_(f"--column only applies to .csv/.tsv files, and {path} is neither")
        return [line.strip() for line in raw.splitlines() if line.strip()]
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = list(csv.reader(raw.splitlines(), delimiter=delimiter))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    lowered = [h.lower() for h in header]
    if column is not None:
        if column.lower() not in lowered:
            raise IndexError_(f"{path} has no column {column!r} (columns: {', '.join(header)})")
        col, body = lowered.index(column.lower()), rows[1:]
    elif any(c in lowered for c in TEXT_COLUMNS):
        col = next(lowered.index(c) for c in TEXT_COLUMNS if c in lowered)
        body = rows[1:]
    elif len(header) == 1:
        col, body = 0, rows
    else:
        raise IndexError_(
            f"{path} has several columns ({', '.join(header)}) and none is named "
            f"{'/'.join(TEXT_COLUMNS[:4])}; pass --column NAME"
        )
    return [r[col].strip() for r in body if len(r) > col and r[col].strip()]

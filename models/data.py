"""Reading (image path, text) tables: CSV, TSV or JSONL, with errors that name the row.

The separator of a delimited file is detected from its header line. Image paths are relative to
``image_root`` unless absolute.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import DataError

SEPARATORS = (",", "\t", "|", ";")


@dataclass(frozen=True)
class Pair:
    """One row: an image and its caption (or label); ``line`` is the 1-based line in the file."""

    image: Path
    text: str
    line: int


def detect_separator(header: str) -> str:
    """The candidate separator that splits the header line into the most columns."""
    best = max(SEPARATORS, key=lambda s: len(next(csv.reader([header], delimiter=s))))
    return best if len(next(csv.reader([header], delimiter=best))) > 1 else ","


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from e
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {n}: expected a JSON object per line")
                yield n, {k: "" if v is None else str(v) for k, v in row.items()}
        return
    # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column name.
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = f.readline()
        if not header.strip():
            raise DataError(f"{path}: empty file, expected a header line")
        f.seek(0)
        reader = csv.DictReader(f, delimiter=detect_separator(header))
        for row in reader:
            # A short row leaves its missing fields None: make them empty so they are reported.
            yield reader.line_num, {k: v or "" for k, v in row.items() if k is not None}


def read_pairs(
    path: str | Path,
    image_root: str | Path | None = None,
    image_col: str = "filepath",
    text_col: str = "caption",
    split: str | None = None,
    split_col: str = "split",
    check_images: bool = True,
) -> list[Pair]:
    """Read every (image, text) row of ``path``, optionally keeping one ``split``.

    Raises ``DataError`` naming the file and line for a missing column, an empty value or (with
    ``check_images``) an image file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    pairs: list[Pair] = []
    for line, row in _rows(path):
        for col in (image_col, text_col) + ((split_col,) if split else ()):
            if col not in row:
                raise DataError(
                    f"{path}, line {line}: no column {col!r} (columns: {', '.join(row)}); "
                    "name the right one with --image-col/--text-col"
                )
        if split and row[split_col] != split:
            continue
        image, text = row[image_col].strip(), row[text_col].strip()
        if not image or not text:
            empty = image_col if not image else text_col
            raise DataError(f"{path}, line {line}: empty {empty!r}")
        image_path = Path(image) if Path(image).is_absolute() else root / image
        if check_images and not image_path.is_file():
            raise DataError(f"{path}, line {line}: image not found: {image_path}")
        pairs.append(Pair(image_path, text, line))
    if not pairs:
        raise DataError(f"{path}: no rows" + (f" with {split_col}={split!r}" if split else ""))
    return pairs

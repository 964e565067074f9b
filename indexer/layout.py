"""The on-disk format of an index directory, its manifest, and atomic file writes.

Format version 1. An index directory holds::

    DIR/
      manifest.json             what built the index (written last at creation: the commit point)
      catalog.sqlite3           the source of truth, SQLite in WAL mode (+ -wal, -shm): catalog.py
      images.<gen>.faiss        FAISS checkpoint of the image vectors as of catalog generation <gen>
      images.<gen>.json         what that checkpoint is: spec, tuned search params, recall@10, ...
      texts.<gen>.faiss/.json   the same for the text corpus
      query-text.tower          torch-free copy of the text tower, for queries (query_text.py)
      write.lock                flock(2) held by the one writer (holds its pid, for messages)

``manifest.json``::

    {"format_version": 1,
     "model": {"model", "pretrained", "weights_sha256", "dim", "image_size", "precision"},
     "preprocess": "<repr of the image transform>",
     "index": {"type": "auto|flat|hnsw|ivf|ivfpq", "max_memory": bytes|null,
               "flat_threshold": int, "recall_target": float},
     "decode": {"max_pixels": int},
     "created": "<ISO time>"}

An index is refused when its encoder's model name, weights hash or dim differ from ``model``
(precision may differ: bf16 and fp32 vectors of one model are interchangeable for search).

FAISS files are derived artifacts: FAISS ids are the catalog's stable ids, and the catalog keeps
every vector (float32), so a checkpoint can always be rebuilt without re-embedding. A reader loads
the newest checkpoint and applies the catalog's changes since its generation (rows with a newer
``gen`` and tombstones), so a missing or stale checkpoint costs a delta or a rebuild, never data.
Checkpoints are written to a temporary name, fsynced, renamed, and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from indexer.errors import IndexFormatError, IndexNotFoundError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOG = "catalog.sqlite3"
LOCK = "write.lock"
TARGETS = {"images": "image", "texts": "text"}  # search target -> catalog kind
# From this many images an index built from embedding shards keeps IVF-PQ lists on disk.
DEFAULT_ONDISK_THRESHOLD = 2_000_000
# Embedding shards (``clipsearch embed``): engines and items per shard.
ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 10_000
FILE_STEMS = {"image": "images", "text": "texts"}  # catalog kind -> checkpoint file stem
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
DEFAULT_FLAT_THRESHOLD = 200_000
DEFAULT_RECALL_TARGET = 0.95
TMP_MARK = ".tmp-"
_CHECKPOINT_RE = re.compile(r"^(images|texts)\.(\d+)\.(faiss|json)$")


@dataclass
class IndexSettings:
    type: str = "auto"
    max_memory: int | None = None
    flat_threshold: int = DEFAULT_FLAT_THRESHOLD
    recall_target: float = DEFAULT_RECALL_TARGET


@dataclass
class Manifest:
    model: dict[str, Any]
    preprocess: str
    index: IndexSettings = field(default_factory=IndexSettings)
    max_pixels: int = 0
    format_version: int = FORMAT_VERSION
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model,
            "preprocess": self.preprocess,
            "index": asdict(self.index),
            "decode": {"max_pixels": self.max_pixels},
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            model=dict(data["model"]),
            preprocess=data.get("preprocess", ""),
            index=IndexSettings(**data.get("index", {})),
            max_pixels=int(data.get("decode", {}).get("max_pixels", 0)),
            format_version=int(data["format_version"]),
            created=data.get("created", ""),
        )


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexNotFoundError(
            f"no index at {directory} (no {MANIFEST}); create one with "
            f"'clipsearch index PATH... --index {directory}'"
        )
    try:
        data = json.loads(path.read_text())
        version = int(data["format_version"])
    except (ValueError, KeyError, TypeError) as e:
        raise IndexFormatError(
            f"{path} is damaged ({e}); rebuild the index in a new directory"
        ) from e
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{directory} uses index format {version}, newer than this clipsearch understands "
            f"({FORMAT_VERSION}); upgrade clipsearch"
        )
    try:
        return Manifest.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise IndexFormatError(
            f"{path} is damaged ({e}); rebuild the index in a new directory"
        ) from e


def write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write_bytes(
        directory / MANIFEST, (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
    )


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers and crashes see the old file or the new one, whole."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def checkpoint_paths(directory: Path, kind: str, gen: int) -> tuple[Path, Path]:
    stem = f"{FILE_STEMS[kind]}.{gen}"
    return directory / f"{stem}.faiss", directory / f"{stem}.json"


def list_checkpoints(directory: Path, kind: str) -> list[int]:
    """Generations of the complete checkpoints of ``kind``, newest first."""
    stem = FILE_STEMS[kind]
    gens = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            m = _CHECKPOINT_RE.match(name)
            if (
                m
                and m.group(1) == stem
                and m.group(3) == "faiss"
                and (directory / f"{stem}.{m.group(2)}.json").is_file()
            ):
                gens.append(int(m.group(2)))
    return sorted(gens, reverse=True)


def remove_stale_files(directory: Path, kind: str, keep_gen: int) -> None:
    """Delete older checkpoints of ``kind`` (the FAISS file first: it is the commit point)."""
    stem = FILE_STEMS[kind]
    old = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            m = _CHECKPOINT_RE.match(name)
            if m and m.group(1) == stem and int(m.group(2)) < keep_gen:
                old.append(name)
    for name in sorted(old, key=lambda n: not n.endswith(".faiss")):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def remove_tmp_files(directory: Path) -> None:
    """Leftovers of a writer killed mid-write (only the lock holder calls this)."""
    for p in directory.iterdir():
        if TMP_MARK in p.name:
            with contextlib.suppress(OSError):
                p.unlink()

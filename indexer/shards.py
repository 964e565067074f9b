"""Embedding shards on disk, in clip-retrieval's layout, written by ``clipsearch embed``.

An embeddings directory holds::

    DIR/
      embeddings.json                 the model that made every vector (checked on each run)
      img_emb/img_emb_{i}.npy         float32 (n, dim), L2-normalised, one row per ok image
      metadata/metadata_{i}.parquet   path, sha256, size, mtime_ns, width, height (same rows)
      skipped/skipped_{i}.parquet     path, size, mtime_ns, reason, detail (the shard's bad files)
      text_emb/text_emb_{i}.npy       the same for a text corpus (``embed-text``)
      text_metadata/metadata_{i}.parquet   text, sha256

Shard ``i`` is finished when its metadata file exists: the vectors and the skipped list are
written first (each to a temporary name, then renamed), the metadata last, so a run killed
mid-shard leaves no finished shard with missing rows. A rerun skips what finished shards cover
and numbers new shards after the highest one present.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.errors import IndexError_, ModelMismatchError
from indexer.layout import atomic_write_bytes, fsync_dir, tmp_name

MANIFEST = "embeddings.json"
FORMAT = 1


@dataclass(frozen=True)
class Modality:
    """Where one modality's shards live inside an embeddings directory."""

    kind: str  # "image" | "text"
    emb_dir: str
    emb_stem: str
    meta_dir: str

    def emb(self, root: Path, i: int) -> Path:
        return root / self.emb_dir / f"{self.emb_stem}_{i}.npy"

    def meta(self, root: Path, i: int) -> Path:
        return root / self.meta_dir / f"metadata_{i}.parquet"

    def skipped(self, root: Path, i: int) -> Path:
        return root / "skipped" / f"skipped_{i}.parquet"


IMAGES = Modality("image", "img_emb", "img_emb", "metadata")
TEXTS = Modality("text", "text_emb", "text_emb", "text_metadata")
MODALITIES = {"image": IMAGES, "text": TEXTS}
_SHARD_RE = re.compile(r"_(\d+)\.(npy|parquet)$")

IMAGE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
TEXT_SCHEMA = pa.schema([("text", pa.string()), ("sha256", pa.string())])
SKIPPED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def _identity(model: dict[str, Any]) -> tuple[str, str, int]:
    return (str(model["model"]), str(model["weights_sha256"]), int(model["dim"]))


def read_manifest(root: Path) -> dict[str, Any]:
    """The embeddings directory's manifest; a missing one is the caller's mistake."""
    path = root / MANIFEST
    if not path.is_file():
        raise IndexError_(
            f"no embeddings in {root} (no {MANIFEST}); write them with "
            f"'clipsearch embed PATH... --out {root}'"
        )
    try:
        data = json.loads(path.read_text())
        _identity(data["model"])
        return data
    except (ValueError, KeyError, TypeError) as e:
        raise IndexError_(f"{path} is damaged ({e}); embed into a new directory") from e


def open_for_writing(root: Path, model: dict[str, Any], preprocess: str) -> dict[str, Any]:
    """Create ``root`` (or check that its vectors come from the same model) for a run."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root)
        if _identity(manifest["model"]) != _identity(model):
            built = manifest["model"]
            raise ModelMismatchError(
                f"the embeddings in {root} come from {built['model']} (weights "
                f"{built['pretrained']}, dim {built['dim']}), not {model['model']} (weights "
                f"{model['pretrained']}); pass that model or a new --out directory"
            )
        return manifest
    manifest = {
        "format": FORMAT,
        "model": model,
        "preprocess": preprocess,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def finished(root: Path, modality: Modality) -> list[int]:
    """Numbers of the finished shards of ``modality``, ascending."""
    meta_dir = root / modality.meta_dir
    if not meta_dir.is_dir():
        return []
    out = []
    for name in os.listdir(meta_dir):
        m = _SHARD_RE.search(name)
        if m and name.startswith("metadata_") and m.group(2) == "parquet":
            out.append(int(m.group(1)))
    return sorted(out)


def next_shard(root: Path, modality: Modality) -> int:
    """The number after every shard file present (finished or left over by a killed run)."""
    highest = -1
    for sub in (modality.emb_dir, modality.meta_dir):
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(root / sub):
                m = _SHARD_RE.search(name)
                if m:
                    highest = max(highest, int(m.group(1)))
    return highest + 1


def covered(root: Path, modality: Modality) -> set[str]:
    """Paths (or texts) that finished shards already hold, ok or skipped."""
    key = "path" if modality.kind == "image" else "text"
    seen: set[str] = set()
    for i in finished(root, modality):
        seen.update(pq.read_table(modality.meta(root, i), columns=[key]).column(key).to_pylist())
        if modality.kind == "image" and modality.skipped(root, i).is_file():
            table = pq.read_table(modality.skipped(root, i), columns=["path"])
            seen.update(table.column("path").to_pylist())
    return seen


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)``, fsync, rename over ``path``: readers see no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_parquet(path: Path, table: pa.Table) -> None:
    _write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def _write_npy(path: Path, vectors: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a name would get ".npy" appended
            np.save(f, np.ascontiguousarray(vectors, np.float32))

    _write_atomically(path, write)


def write_shard(
    root: Path,
    modality: Modality,
    i: int,
    vectors: np.ndarray,
    rows: dict[str, list],
    skipped: dict[str, list] | None = None,
) -> None:
    """Write shard ``i``: vectors, skipped files, then the metadata (the commit point)."""
    schema = IMAGE_SCHEMA if modality.kind == "image" else TEXT_SCHEMA
    table = pa.Table.from_pydict(rows, schema=schema)
    if table.num_rows != len(vectors):
        raise ValueError(f"shard {i}: {table.num_rows} metadata rows for {len(vectors)} vectors")
    _write_npy(modality.emb(root, i), vectors)
    if modality.kind == "image":
        bad = skipped or {name: [] for name in SKIPPED_SCHEMA.names}
        _write_parquet(modality.skipped(root, i), pa.Table.from_pydict(bad, schema=SKIPPED_SCHEMA))
    _write_parquet(modality.meta(root, i), table)
    fsync_dir(modality.meta(root, i).parent)


@dataclass
class Shard:
    """One finished shard, read back: ``vectors`` is memory-mapped, not loaded."""

    number: int
    vectors: np.ndarray
    meta: pa.Table
    skipped: pa.Table | None


def read_shard(root: Path, modality: Modality, i: int, dim: int) -> Shard:
    emb = modality.emb(root, i)
    try:
        vectors = np.load(emb, mmap_mode="r")
        meta = pq.read_table(modality.meta(root, i))
        skipped_path = modality.skipped(root, i)
        has_skipped = modality.kind == "image" and skipped_path.is_file()
        skipped = pq.read_table(skipped_path) if has_skipped else None
    except (OSError, ValueError, pa.ArrowException) as e:
        raise IndexError_(f"shard {i} in {root} cannot be read ({e}); embed it again") from e
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.shape[0] != meta.num_rows:
        raise IndexError_(
            f"{emb} holds {vectors.shape} vectors for {meta.num_rows} metadata rows of dim {dim}; "
            "delete the shard's files and rerun 'clipsearch embed' to write it again"
        )
    return Shard(i, vectors, meta, skipped)

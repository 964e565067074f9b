"""Export an index's image vectors for other tools, in clip-retrieval's layout::

    OUT/img_emb/img_emb_0.npy            float32 (N, dim), L2-normalised, row i = metadata row i
    OUT/metadata/metadata_0.parquet      image_path, id, sha256, width, height

``format="parquet"`` writes the vectors into the table instead (``OUT/img_emb/img_emb_0.parquet``:
the same columns plus ``embedding``, a fixed-size list of float32), for pandas, DuckDB or Spark.
The export is written beside ``OUT`` and renamed into place, so ``OUT`` is whole or absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import IndexError_

if TYPE_CHECKING:
    from indexer.index import Index

FORMATS = ("npy", "parquet")


class ExportError(IndexError_):
    """The export cannot be written where or how it was asked."""


def export_index(index: Index, out: Path, format: str = "npy") -> dict[str, object]:
    """Write the image vectors and their metadata to ``out`` (which must not hold files yet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if format not in FORMATS:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, not {format!r}")
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: pick a new --out directory")
    with index.catalog.snapshot():
        ids, vectors = index.catalog.vectors("image")
        rows = index.catalog.rows(ids.tolist())
        sha256 = index.catalog.sha256_of(ids.tolist())
    table = pa.table(
        {
            "image_path": [rows[int(i)].path for i in ids],
            "id": ids,
            "sha256": [sha256.get(int(i)) for i in ids],
            "width": [rows[int(i)].width for i in ids],
            "height": [rows[int(i)].height for i in ids],
        }
    )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "img_emb").mkdir(parents=True)
        if format == "npy":
            (tmp / "metadata").mkdir()
            np.save(tmp / "img_emb" / "img_emb_0.npy", vectors.astype(np.float32))
            pq.write_table(table, tmp / "metadata" / "metadata_0.parquet")
        else:
            flat = pa.array(vectors.astype(np.float32).ravel())
            column = pa.FixedSizeListArray.from_arrays(flat, index.dim)
            pq.write_table(
                table.append_column("embedding", column), tmp / "img_emb" / "img_emb_0.parquet"
            )
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"directory": str(out), "format": format, "images": len(ids), "dim": index.dim}

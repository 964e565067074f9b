"""Shared helpers for the indexer tests (no tests here): tiny encoder, generated images, checks."""

from __future__ import annotations

import functools
import sqlite3
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from synthetic import combos, draw

from models.encoder import Encoder

TINY = ("clipsearch-tiny", "none")


@functools.lru_cache(maxsize=1)
@functools.lru_cache(maxsize=1)
def tiny_encoder() -> Encoder:
    """Deterministic random weights, loaded once per test process (encoders hold no state)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Encoder.load(*TINY, device="cpu", precision="fp32")


def write_images(
    folder: Path, n: int, start: int = 0, size: int = 40, fmt: str = "png"
) -> list[Path]:
    """``n`` distinct pictures (shapes, then noise) named ``img_<i>.<fmt>``."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = combos(224)
    out = []
    for i in range(start, start + n):
        if i < len(shapes):
            image = draw(*shapes[i], size=size)
        else:
            rng = np.random.default_rng(i)
            image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        path = folder / f"img_{i:04d}.{fmt}"
        image.save(path)
        out.append(path)
    return out


def catalog_rows(index_dir: Path) -> list[tuple]:
    """(id, path, status, reason, has_vector) of every image row, read with a fresh connection."""
    with sqlite3.connect(index_dir / "catalog.sqlite3") as conn:
        return conn.execute(
            "SELECT id, path, status, reason, vector IS NOT NULL FROM items WHERE kind = 'image'"
        ).fetchall()


def assert_one_vector_per_file(index, good: list[Path]) -> None:
    """Exactly one catalog vector and one FAISS entry per good file: none lost, none duplicated."""
    import faiss

    rows = [r for r in catalog_rows(index.directory) if r[2] == "ok"]
    paths = sorted(r[1] for r in rows)
    assert paths == sorted(str(p) for p in good)
    assert all(r[4] for r in rows)
    ids = sorted(r[0] for r in rows)
    state = index._faiss.state("image")
    assert state.ntotal == len(good)
    inner = state.index
    if hasattr(inner, "id_map"):
        faiss_ids = sorted(faiss.vector_to_array(inner.id_map).tolist())
        assert faiss_ids == ids
    # Every file finds itself first by its own vector.
    for r in rows[:5]:
        hit = index.get(r[0])
        assert hit is not None and hit.path == r[1]


def garble_catalog_pages(catalog: Path) -> None:
    """Overwrite every page of a catalog after the first two (schema and meta) with noise."""
    with sqlite3.connect(catalog) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(catalog.read_bytes())
    for start in range(2 * page, len(data), page):
        data[start : start + page] = b"\x0d" * page
    catalog.write_bytes(bytes(data))

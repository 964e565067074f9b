"""What ``info`` reports about an index: counts, model, index types, recall, sizes, damage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer import faiss_index as fx
from indexer.catalog import Catalog
from indexer.errors import IndexFormatError
from indexer.faiss_states import FaissStates
from indexer.layout import FORMAT_VERSION, TARGETS, Manifest, list_checkpoints

_SEARCH_PARAM = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}


def _from_checkpoint(directory: Path, kind: str, damaged: dict[str, str]) -> dict[str, Any]:
    """The newest intact checkpoint's description, without loading it (``info`` stays fast);
    a damaged one is recorded in ``damaged``."""
    for g in list_checkpoints(directory, kind):
        try:
            meta = fx.verify_checkpoint(directory, kind, g)
        except FileNotFoundError:
            continue
        except IndexFormatError as e:
            damaged.setdefault(kind, str(e))
            continue
        spec = meta["spec"]
        param = _SEARCH_PARAM.get(spec["type"])
        return {
            "type": spec["type"],
            "factory": spec["factory"],
            "vectors": meta["vectors"],
            "generation": meta["generation"],
            **({param: meta.get("value")} if param else {}),
            **meta.get("info", {}),
        }
    return {"type": None, "note": "not loaded"}


def index_stats(
    directory: Path, manifest: Manifest, catalog: Catalog, states: FaissStates, max_pixels: int
) -> dict[str, Any]:
    """Counts, model, index types, recall, sizes, damage and format version (``info --json``)."""
    with catalog.snapshot():
        counts = catalog.counts()
        gen = catalog.generation()
    m = manifest.model
    damaged = dict(states.damaged)
    indexes: dict[str, Any] = {}
    faiss_bytes = 0
    for target, kind in TARGETS.items():
        state = states.current.get(kind)
        desc = state.describe() if state is not None else _from_checkpoint(directory, kind, damaged)
        files = list_checkpoints(directory, kind)
        if files:
            size = (directory / f"{target}.{files[0]}.faiss").stat().st_size
            desc["file_bytes"] = size
            faiss_bytes += size
        desc["up_to_date"] = desc.get("generation") == gen and kind not in damaged
        indexes[target] = desc
    catalog_bytes = catalog.file_bytes()
    image_index = indexes["images"]
    return {
        "directory": str(directory),
        "format_version": manifest.format_version,
        "library_format_version": FORMAT_VERSION,
        "schema_version": catalog.schema_version,
        "images": counts["images"],
        "texts": counts["texts"],
        "skipped": counts["skipped"],
        "skipped_by_reason": counts["skipped_by_reason"],
        "model": m["model"],
        "pretrained": m["pretrained"],
        "weights_sha256": m["weights_sha256"],
        "dim": int(m["dim"]),
        "image_size": m.get("image_size"),
        "precision": m.get("precision"),
        "preprocess": manifest.preprocess,
        "index_type": image_index.get("type"),
        "index_settings": vars(manifest.index).copy(),
        "max_pixels": max_pixels,
        "recall@10": image_index.get("recall@10"),
        "indexes": indexes,
        "damaged": {t: damaged[k] for t, k in TARGETS.items() if k in damaged},
        "generation": gen,
        "sizes": {
            "catalog_bytes": catalog_bytes,
            "faiss_bytes": faiss_bytes,
            "total_bytes": catalog_bytes + faiss_bytes,
        },
    }

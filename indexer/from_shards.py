"""``clipsearch index --from-embeddings DIR``: an index from embedding shards, without encoding.

Each finished shard of DIR (``indexer.shards``) is imported once, in one catalog transaction that
also records it (a ``meta`` row ``shard:<DIR>:<kind>:<i>``), so a rerun imports only new shards
and a killed run leaves whole shards. The ids the catalog gave a shard's vectors are kept beside
it (``imported/<key>.ids.npy``): with the shard's own vector file they are the on-disk builder's
input, so the vectors are never read back out of SQLite.

Below ``ondisk_threshold`` image vectors the FAISS indexes are built as ``Index`` builds them
(exact, or IVF tuned to the recall target). At or above it the image index is IVF-PQ with
on-disk inverted lists (``indexer.ondisk``): memory bounded by the settings, not the collection.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexer import faiss_index as fx
from indexer import ondisk
from indexer import shards as sh
from indexer.catalog import Catalog
from indexer.errors import ModelMismatchError
from indexer.index import Index
from indexer.layout import (
    CATALOG,
    DEFAULT_ONDISK_THRESHOLD,
    MANIFEST,
    IndexSettings,
    Manifest,
    atomic_write_bytes,
    list_checkpoints,
    read_manifest,
    remove_stale_files,
    write_manifest,
)
from indexer.provenance import _describe, identity
from indexer.results import IndexReport

IMPORTED = "imported"
_ROWS_PER_STATEMENT = 5_000


def _open(directory: Path, source: dict[str, Any], lock_timeout: float) -> Index:
    """Open the index at ``directory`` or create it for ``source``'s model, loading no model."""
    model = source["model"]
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
        if identity(manifest.model) != identity(model):
            raise ModelMismatchError(
                f"the index in {directory} was built with {_describe(manifest.model)}, but the "
                f"embeddings come from {_describe(model)}; import them into a new --index"
            )
        catalog = Catalog(directory / CATALOG, int(model["dim"]))
    else:
        manifest = Manifest(model=model, preprocess=source.get("preprocess", ""))
        directory.mkdir(parents=True, exist_ok=True)
        catalog = Catalog.create(directory / CATALOG, int(model["dim"]))
    index = Index(directory, manifest, catalog, None, load=False, lock_timeout=lock_timeout)
    if not (directory / MANIFEST).is_file():
        with index._lock.hold(lock_timeout):
            write_manifest(directory, manifest)
    return index


def _key(source: Path, kind: str, i: int) -> str:
    return f"shard:{source}:{kind}:{i}"


def _ids_file(directory: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return directory / IMPORTED / f"{digest}.ids.npy"


def _imported(catalog: Catalog) -> dict[str, dict[str, Any]]:
    rows = catalog.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'shard:%'").fetchall()
    return {k: json.loads(v) for k, v in rows}


def _import_shard(
    index: Index, source: Path, modality: sh.Modality, i: int, report: IndexReport
) -> None:
    shard = sh.read_shard(source, modality, i, index.dim)
    key = _key(source, modality.kind, i)
    meta = shard.meta.to_pydict()
    ids: list[int] = []
    with index.catalog.write() as w:
        for start in range(0, len(shard.vectors), _ROWS_PER_STATEMENT):
            vectors = np.asarray(shard.vectors[start : start + _ROWS_PER_STATEMENT])
            for k, vec in enumerate(vectors, start):
                if modality.kind == "image":
                    ids.append(
                        w.put_image(
                            meta["path"][k],
                            meta["size"][k],
                            meta["mtime_ns"][k],
                            meta["sha256"][k],
                            meta["width"][k],
                            meta["height"][k],
                            vec,
                        )
                    )
                else:
                    ids.append(w.put_text(meta["text"][k], meta["sha256"][k], vec))
        if shard.skipped is not None:
            for row in shard.skipped.to_pylist():
                w.put_skipped(row["path"], row["size"], row["mtime_ns"], row["reason"],
                              row["detail"] or "")  # fmt: skip
                report.skip(row["path"], row["reason"], row["detail"] or "")
        ids_path = _ids_file(index.directory, key)
        ids_path.parent.mkdir(exist_ok=True)
        buf = _npy_bytes(np.asarray(ids, np.int64))
        atomic_write_bytes(ids_path, buf)
        record = {"source": str(source), "kind": modality.kind, "shard": i, "rows": len(ids)}
        w.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(record))
        )
    report.indexed += len(ids)
    report.ids.extend(ids)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _image_parts(index: Index, records: dict[str, dict[str, Any]]) -> list[ondisk.Part]:
    """Every imported image shard as (vectors, ids), plus images indexed from folders."""
    parts = []
    for key, rec in sorted(records.items(), key=lambda kv: (kv[1]["source"], kv[1]["shard"])):
        if rec["kind"] != "image":
            continue
        source = Path(rec["source"])
        vectors = np.load(sh.IMAGES.emb(source, rec["shard"]), mmap_mode="r")
        ids = np.load(_ids_file(index.directory, key))
        part_key = hashlib.sha256(key.encode()).hexdigest()[:24]
        parts.append(ondisk.Part(part_key, vectors, ids))
    covered = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
    extra = np.setdiff1d(index.catalog.ids("image"), covered)
    if extra.size:
        ids, vectors = index.catalog.vectors("image", extra.tolist())
        digest = hashlib.sha256(ids.tobytes()).hexdigest()[:24]
        parts.append(ondisk.Part(f"catalog-{digest}", vectors, ids))
    return parts


def index_from_embeddings(
    source: str | Path,
    directory: str | Path,
    *,
    ondisk_threshold: int = DEFAULT_ONDISK_THRESHOLD,
    train_size: int = ondisk.DEFAULT_TRAIN_SIZE,
    recall_target: float | None = None,
    lock_timeout: float = 0.0,
) -> IndexReport:
    """Import the new shards of ``source`` into the index at ``directory`` (created if needed)."""
    t0 = time.perf_counter()
    source = Path(source).expanduser().absolute()
    directory = Path(directory).expanduser().absolute()
    embeddings = sh.read_manifest(source)
    index = _open(directory, embeddings, lock_timeout)
    report = IndexReport()
    try:
        with index._lock.hold(lock_timeout):
            done = _imported(index.catalog)
            for modality in (sh.IMAGES, sh.TEXTS):
                for i in sh.finished(source, modality):
                    if _key(source, modality.kind, i) in done:
                        report.unchanged += done[_key(source, modality.kind, i)]["rows"]
                    else:
                        _import_shard(index, source, modality, i, report)
            report.embedded = 0
            _sync(index, ondisk_threshold, train_size, recall_target)
    finally:
        index.close()
    report.seconds = time.perf_counter() - t0
    return report


def _ondisk_at(directory: Path, gen: int) -> bool:
    """Whether the newest image checkpoint is an on-disk index of generation ``gen``."""
    gens = list_checkpoints(directory, "image")
    if not gens or gens[0] != gen:
        return False
    return bool(fx.read_checkpoint_info(directory, "image", gen)["info"].get("ondisk"))


def _sync(index: Index, threshold: int, train_size: int, recall_target: float | None) -> None:
    """Bring the FAISS indexes up to the catalog (the caller holds the write lock)."""
    manifest = index.manifest
    if recall_target is not None and recall_target != manifest.index.recall_target:
        manifest.index.recall_target = recall_target
        write_manifest(index.directory, manifest)
    n_images = index.catalog.count_ok("image")
    if n_images >= max(threshold, ondisk.MIN_VECTORS):
        if manifest.index.type != "ivfpq":
            # Recorded so that ``Index`` keeps (and deltas) this index instead of rebuilding it.
            manifest.index = IndexSettings(**{**vars(manifest.index), "type": "ivfpq"})
            write_manifest(index.directory, manifest)
        with index.catalog.snapshot():
            gen = index.catalog.generation()
            if _ondisk_at(index.directory, gen):
                index._sync()
                return
            parts = _image_parts(index, _imported(index.catalog))
            alive = index.catalog.ids("image")
            text_ids = index.catalog.ids("text")
            pick = np.random.default_rng(gen).permutation(text_ids)[:20_000]
            _, other = index.catalog.vectors("text", np.sort(pick).tolist())
        state = ondisk.build(
            index.directory, parts, alive, other, gen, manifest.index.recall_target, train_size,
            probes=index.probe_vectors() if fx.probes_needed(len(other)) else None,
        )  # fmt: skip
        fx.save_checkpoint(index.directory, state)
        remove_stale_files(index.directory, state.kind, state.gen)
        ondisk.remove_stale(index.directory, state.info["ivfdata"])
    index._sync()

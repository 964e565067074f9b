"""One incremental image-indexing run: scan, plan against the catalog, embed, commit in batches.

Planning: a file whose size and mtime match its ``ok`` row is unchanged. Every other file is read
(once) and hashed: the same content as its row is a touched file (new stat, same vector); content
whose vector the catalog already holds reuses it (duplicates, reverts) and, when the content
belongs to a catalogued path that vanished, the row moves to the new path with its id (a rename).
Only new content is decoded and embedded. Catalogued paths below the scanned roots that were not
found are removed at the end (unless their directory could not be listed this time).

Crash safety: each batch of results is one SQLite transaction, so a killed run leaves whole
batches; the rerun finds them unchanged and carries on. Nothing in FAISS needs to be consistent
with the catalog mid-run: it is brought up to date from the catalog afterwards.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from indexer.catalog import Catalog, ImageRow
from indexer.decode import WORKER_NICE, Skip, decode, read_bytes, sha256_hex
from indexer.exif import PhotoInfo
from indexer.pipeline import Batch, DecodeDataset, Item, batches, default_workers
from indexer.results import IndexReport
from indexer.scan import Found, scan
from models.encoder import Encoder

log = logging.getLogger(__name__)


class _Run:
    def __init__(
        self,
        catalog: Catalog,
        encoder: Encoder,
        todo: list[Found],
        existing: dict[str, ImageRow],
        gone: dict[str, ImageRow],
        report: IndexReport,
        max_pixels: int,
    ) -> None:
        self.catalog = catalog
        self.encoder = encoder
        self.todo = todo
        self.existing = existing
        self.gone_by_sha: dict[str, list[ImageRow]] = defaultdict(list)
        for row in gone.values():
            if row.status == "ok" and row.sha256:
                self.gone_by_sha[row.sha256].append(row)
        self.gone = gone
        self.report = report
        self.max_pixels = max_pixels

    def _fallback_decode(self, item: Item) -> np.ndarray | None:
        """A worker skipped decoding a hash it believed known, but no vector matched it."""
        path = self.todo[item.pos].path
        try:
            data = read_bytes(path)
            item.sha256 = sha256_hex(data)
            decoded = decode(data, self.max_pixels, self.encoder.image_size)
        except Skip as s:
            item.reason, item.detail = s.reason, s.detail
            return None
        item.width, item.height, item.info = decoded.width, decoded.height, decoded.info
        tensor = self.encoder.preprocess(decoded.image)[None]
        return self.encoder.encode_image_tensor(tensor)[0]

    def commit(self, batch: Batch) -> None:
        """Embed what must be, then record every item of ``batch`` in one transaction."""
        items = batch.items
        vectors: dict[str, tuple[np.ndarray, int | None, int | None, PhotoInfo]] = {}
        embedded: set[int] = set()
        # Decoded items whose content is already known (a duplicate in an earlier batch) reuse it.
        encode_rows, encode_pos = [], []
        for row, pos in enumerate(batch.rows):
            sha = items[pos].sha256
            assert sha is not None
            if sha in vectors:
                continue
            known = self.catalog.vector_for_sha(sha)
            if known is not None:
                vectors[sha] = known
            else:
                vectors[sha] = None  # type: ignore[assignment]  # claimed: encoded below
                encode_rows.append(row)
                encode_pos.append(pos)
        if encode_rows:
            assert batch.tensor is not None
            tensor = (
                batch.tensor if len(encode_rows) == len(batch.rows) else batch.tensor[encode_rows]
            )
            out = self.encoder.encode_image_tensor(tensor)
            for vec, pos in zip(out, encode_pos, strict=True):
                it = items[pos]
                vectors[it.sha256] = (vec, it.width, it.height, it.info)  # type: ignore[index]
                embedded.add(pos)

        with self.catalog.write() as w:
            for pos, item in enumerate(items):
                found = self.todo[item.pos]
                path = found.path
                row = self.existing.get(path)
                if item.reason is None and item.reuse:
                    known = vectors.get(item.sha256) or self.catalog.vector_for_sha(item.sha256)  # type: ignore[arg-type]
                    if known is None:
                        vec = self._fallback_decode(item)
                        if vec is not None:
                            known = (vec, item.width, item.height, item.info)
                            embedded.add(pos)
                    if known is not None:
                        vectors[item.sha256] = known  # type: ignore[index]
                if item.reason is not None:
                    w.put_skipped(path, found.size, found.mtime_ns, item.reason, item.detail)
                    self.report.skip(path, item.reason, item.detail)
                    continue
                sha = item.sha256
                assert sha is not None
                if row is not None and row.status == "ok" and row.sha256 == sha:
                    w.touch(row.id, found.size, found.mtime_ns)  # same bytes, new stat
                    self.report.unchanged += 1
                    continue
                vec, width, height, info = vectors[sha]
                if row is None and self.gone_by_sha.get(sha):
                    old = self.gone_by_sha[sha].pop()
                    self.gone.pop(old.path, None)
                    w.move(old.id, path, found.size, found.mtime_ns)
                    self.report.renamed += 1
                    self.report.ids.append(old.id)
                else:
                    new_id = w.put_image(
                        path, found.size, found.mtime_ns, sha, width, height, vec, info
                    )
                    self.report.ids.append(new_id)
                    if pos in embedded:
                        self.report.embedded += 1
                    else:
                        self.report.reused += 1
                self.report.indexed += 1


def index_images(
    catalog: Catalog,
    encoder: Encoder,
    paths: Sequence[str | Path],
    *,
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int,
    progress: bool = False,
    on_batch: Callable[[IndexReport], None] | None = None,
) -> IndexReport:
    """Bring the catalog up to date with the images under ``paths`` (caller holds the lock)."""
    t0 = time.perf_counter()
    report = IndexReport()
    found = scan(paths, exclude, skip_dirs)
    existing = catalog.image_rows_under(found.roots)
    seen: set[str] = set()
    todo: list[Found] = []
    scan_skips: list[Found] = []
    for f in found.files:
        seen.add(f.path)
        row = existing.get(f.path)
        if f.reason is not None:
            scan_skips.append(f)
        elif row and row.status == "ok" and row.size == f.size and row.mtime_ns == f.mtime_ns:
            report.unchanged += 1
        else:
            todo.append(f)
    gone = {p: row for p, row in existing.items() if p not in seen and not found.protected(p)}
    log.info(
        "%d files found: %d unchanged, %d to read, %d unreadable, %d gone",
        len(found.files), report.unchanged, len(todo), len(scan_skips), len(gone),
    )  # fmt: skip
    if scan_skips:
        with catalog.write() as w:
            for f in scan_skips:
                w.put_skipped(f.path, None, None, f.reason or "unreadable", f.detail)
                report.skip(f.path, f.reason or "unreadable", f.detail)

    run = _Run(catalog, encoder, todo, existing, gone, report, max_pixels)
    if todo:
        dataset = DecodeDataset(
            [f.path for f in todo],
            encoder.preprocess,
            max_pixels,
            encoder.image_size,
            catalog.known_hash_keys(),
        )
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=len(todo), unit="img", desc="indexing", dynamic_ncols=True, smoothing=0.05
            )
        try:
            on_cpu = encoder.device.type == "cpu"
            if workers is None:
                workers = default_workers(on_cpu)
            nice = WORKER_NICE if on_cpu else 0
            log.info("decoding in %s", f"{workers} worker processes" if workers else "a thread")
            for batch in batches(dataset, batch_size, workers, worker_nice=nice):
                run.commit(batch)
                if bar is not None:
                    bar.update(len(batch.items))
                if on_batch is not None:
                    on_batch(report)
        finally:
            if bar is not None:
                bar.close()

    if run.gone:
        with catalog.write() as w:
            report.removed = w.delete([row.id for row in run.gone.values()])
    report.seconds = time.perf_counter() - t0
    return report

"""The served index and the threads that touch it; nothing here blocks the event loop.

Encoding and searching run on one inference thread (torch and FAISS spread one call over the
cores they are given, so a second caller would only contend); index changes run on one writer
thread; catalog look-ups and file checks on a small I/O pool, so they never queue behind a batch.
Text queries go through the ``Batcher`` when batching is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from app.batching import Batcher
from app.decode_gate import DecodeGate
from app.errors import ApiError, bad_request, not_found, not_ready
from app.metrics import Metrics
from app.ports import EncoderPort, IndexPort
from app.settings import Settings
from indexer import refine
from models import hubness
from models.errors import ClipsearchError

if TYPE_CHECKING:
    from indexer.query import Query

log = logging.getLogger(__name__)
R = TypeVar("R")
DAMAGED_RETRY_S = 60.0  # a damaged catalog is checked again (read whole) this often


@dataclass(frozen=True)
class TextQuery:
    text: str
    k: int
    target: str
    path_prefix: str | None


class SearchService:
    """Owns the ``Index``: opens it, searches it, changes it and picks up changes from disk."""

    def __init__(
        self, settings: Settings, metrics: Metrics, index: IndexPort | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._index: IndexPort | None = index
        self._owns_index = index is None
        self._open_error: str | None = None if index is not None else "the index is not open yet"
        self._damage: str | None = None
        self._next_open = 0.0  # monotonic time of the next attempt to open a missing index
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-infer")
        self._write = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-write")
        self._io = ThreadPoolExecutor(2, thread_name_prefix="clipsearch-io")
        self._batcher: Batcher[TextQuery, list] = Batcher(
            self._search_text_batch,
            self._infer,
            window_s=settings.batch_window_ms / 1000 if settings.batching else 0.0,
            max_batch=settings.max_batch if settings.batching else 1,
            on_batch=self.metrics.batch_size.observe,
        )
        self.decodes = DecodeGate(settings.max_concurrent_decodes, settings.max_queued_decodes)
        self._reload_task: asyncio.Task | None = None
        self._blas_threshold: int | None = None  # FAISS's own value, put back at stop
        self.started_at = time.time()
        self.last_reload: float | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._run(self._infer, _set_threads, self.settings.inference_threads)
        if self._index is None:
            await self._try_open()
        else:
            self._tuned(self._index.dim)
        self._batcher.start()
        if self.settings.reload_interval_s > 0:
            self._reload_task = asyncio.get_running_loop().create_task(
                self._watch(), name="index-reload"
            )

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        await self._batcher.stop()
        for executor in (self._infer, self._write, self._io):
            executor.shutdown(wait=True)
        if self._owns_index and self._index is not None:
            self._index.close()
            self._index = None
        if self._blas_threshold is not None:
            _restore_faiss(self._blas_threshold)
            self._blas_threshold = None

    def _tuned(self, dim: int) -> None:
        old = _tune_faiss(dim)
        if self._blas_threshold is None:
            self._blas_threshold = old

    async def _try_open(self) -> bool:
        """Open the index; until it exists the service runs and /readyz says why it is not ready."""
        directory = self.settings.index_dir
        if directory is None:
            self._open_error = "no index directory configured (CLIPSEARCH_INDEX_DIR or --index)"
            return False
        try:
            self._index = await self._run(self._write, _open_checked, self.settings)
        except Exception as e:  # keep serving /healthz and /readyz whatever the cause; retried
            message = str(e) if isinstance(e, (ClipsearchError, OSError)) else repr(e)
            if self._open_error != message:
                log.warning("index %s not loaded: %s", directory, message)
            self._open_error = message
            if "damaged" in type(e).__name__.lower():  # reading it all again soon is waste
                self._next_open = time.monotonic() + DAMAGED_RETRY_S
            return False
        self._open_error = None
        self._tuned(self._index.dim)
        await self._run(self._io, self.refresh_size)
        log.info("serving index %s", directory)
        return True

    async def _watch(self) -> None:
        """Poll for changes made by other processes (the indexer CLI, another replica)."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                if self._index is None:
                    if time.monotonic() >= self._next_open:
                        await self._try_open()
                else:
                    await self.reload()
            except Exception:  # keep watching; a half-written index is retried next tick
                log.exception("index reload failed")

    async def reload(self) -> bool:
        """Swap in the on-disk index if it changed; readers see the old or the new, never a mix."""
        changed = bool(await self._run(self._write, self.index.reload_if_changed))
        if changed:
            self.last_reload = time.time()
            self.metrics.reloads.inc()
            await self._run(self._io, self.refresh_size)
        return changed

    # ---------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        return self._index is not None and self._damage is None

    @property
    def not_ready_reason(self) -> str | None:
        return self._damage or self._open_error

    def mark_damaged(self, reason: str) -> None:
        """A file of the served index turned out damaged: stop answering from it (503) and say
        why on /readyz; a restart after the repair serves again."""
        if self._damage is None:
            log.error("index damaged, not serving: %s", reason)
        self._damage = reason

    @property
    def index(self) -> IndexPort:
        if self._damage is not None:
            raise not_ready(f"the index is damaged: {self._damage}")
        if self._index is None:
            raise not_ready(f"the index is not loaded: {self._open_error}")
        return self._index

    @property
    def encoder(self) -> EncoderPort:
        return self.index.encoder

    def refresh_size(self) -> None:
        """Set the index-size gauges from the index's stats."""
        with contextlib.suppress(Exception):
            stats = self._index.stats() if self._index is not None else {}
            for kind in ("images", "texts"):
                if kind in stats:
                    self.metrics.index_size.labels(kind).set(stats[kind])

    async def _run(
        self, executor: ThreadPoolExecutor, fn: Callable[..., R], *a: Any, **kw: Any
    ) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, lambda: fn(*a, **kw))

    # ---------------------------------------------------------------- reads

    async def search_text(
        self, text: str, k: int, target: str, path_prefix: str | None = None
    ) -> list:
        self.index  # noqa: B018 - raise 503 before queueing when not loaded
        return await self._batcher.submit(TextQuery(text, k, target, path_prefix))

    def _search_text_batch(self, queries: Sequence[TextQuery]) -> list[list | BaseException]:
        """Encode every query in one call, then one FAISS call per (target, filter) group."""
        index = self.index
        t0 = time.perf_counter()
        vectors = index.embed_texts([q.text for q in queries])
        self.metrics.encode.labels("text").observe(time.perf_counter() - t0)
        out: list[list | BaseException] = [[] for _ in queries]
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.target, q.path_prefix), []).append(i)
        for (target, prefix), rows in groups.items():
            k = max(queries[i].k for i in rows)
            try:
                t0 = time.perf_counter()
                specific = [hubness.specific(queries[i].text) for i in rows]
                results = refine.search_clean_batch(
                    index, vectors[rows], k, target, prefix, specific
                )
                self.metrics.search.labels(target).observe(time.perf_counter() - t0)
            except Exception as e:
                for i in rows:
                    out[i] = e
                continue
            for i, hits in zip(rows, results, strict=True):
                out[i] = list(hits)[: queries[i].k]
        return out

    async def search_query(
        self,
        query: Query,
        k: int,
        target: str,
        path_prefix: str | None = None,
        taken: refine.TakenRange | None = None,
    ) -> list:
        """A query expression (``indexer.query``): weighted texts and images, named images out."""
        from indexer.query import search

        index = self.index
        return await self._run(
            self._infer, search, index, query, k, target, path_prefix, files=False, taken=taken
        )

    async def search_vector(
        self, vector: np.ndarray, k: int, target: str, path_prefix: str | None = None
    ) -> list:
        dim = self.encoder.dim
        if vector.shape != (dim,):
            raise bad_request(f"vector has {vector.size} values; this index's model has dim {dim}")
        if not np.isfinite(vector).all():
            raise bad_request("vector has NaN or infinite values")
        peak = float(np.abs(vector).max())
        if peak == 0:
            raise bad_request("vector is all zeros")
        scaled = vector / peak  # scale first, so no magnitude overflows the norm
        unit = (scaled / np.linalg.norm(scaled)).astype(np.float32)
        return await self._run(self._infer, self._search_one, unit, k, target, path_prefix)

    def _search_one(self, vector: np.ndarray, k: int, target: str, prefix: str | None) -> list:
        t0 = time.perf_counter()
        hits = self.index.search_vectors(
            vector[None, :].astype(np.float32), k=k, target=target, path_prefix=prefix
        )[0]
        self.metrics.search.labels(target).observe(time.perf_counter() - t0)
        return list(hits)

    async def search_image(
        self,
        image: torch.Tensor | Path,
        k: int,
        target: str,
        path_prefix: str | None = None,
        taken: refine.TakenRange | None = None,
    ) -> list:
        """Image → clean hits: a preprocessed upload, or the ``Path`` of an indexed image (read by
        the encoder's own loader)."""

        def work() -> list:
            vector = self._timed("image", self._encode_images, [image])[0]
            t0 = time.perf_counter()
            hits = refine.search_clean(self.index, vector, k, target, path_prefix, taken=taken)
            self.metrics.search.labels(target).observe(time.perf_counter() - t0)
            return hits

        return await self._run(self._infer, work)

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self._run(self._infer, self._timed, "text", self.encoder.encode_texts, texts)

    async def embed_images(self, images: Sequence[torch.Tensor | Path]) -> np.ndarray:
        """Embeddings of preprocessed uploads (``decode_uploads``) or indexed image files."""
        return await self._run(self._infer, self._timed, "image", self._encode_images, images)

    def _encode_images(self, images: Sequence[torch.Tensor | Path]) -> np.ndarray:
        encoder = self.encoder
        inputs = [x if isinstance(x, torch.Tensor) else encoder.preprocess_image(x) for x in images]
        return encoder.encode_image_tensor(torch.stack(inputs))

    def _timed(self, modality: str, fn: Callable[[Any], np.ndarray], arg: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = fn(arg)
        self.metrics.encode.labels(modality).observe(time.perf_counter() - t0)
        return out

    async def get(self, item_id: int) -> Any:
        """The stored item, or 404."""
        hit = await self._run(self._io, self.index.get, item_id)
        if hit is None:
            raise not_found(f"no item with id {item_id} in the index")
        return hit

    async def get_many(self, ids: Sequence[int]) -> list:
        """Stored items for ``ids`` (None where unknown), in one trip to the I/O pool."""
        index = self.index
        return await self._run(self._io, lambda: [index.get(i) for i in ids])

    async def get_image_path(self, item_id: int) -> Path:
        """The file of image ``item_id``; 404 if the id is unknown, a text, or its file is gone."""
        hit = await self.get(item_id)
        if hit.kind != "image" or not hit.path:
            raise not_found(f"item {item_id} is a {hit.kind}, not an image")
        path = Path(hit.path)
        if not await self._run(self._io, path.is_file):
            raise ApiError(
                404, "file_missing", f"image {item_id} is indexed but its file is gone: {path.name}"
            )
        return path

    async def stats(self) -> dict[str, Any]:
        return dict(await self._run(self._io, self.index.stats))

    # ---------------------------------------------------------------- writes

    async def add_images(self, paths: list[Path]) -> tuple[dict[str, Any], list]:
        """Index ``paths``; returns the report and the stored items for them (re-uploads of a
        file already indexed included, which the report counts as unchanged)."""
        index = self.index
        report = await self._run(self._write, index.add_images, [str(p) for p in paths])
        await self._run(self._io, self.refresh_size)

        def lookup() -> list:
            ids = list(getattr(report, "ids", None) or [])
            catalog = getattr(index, "catalog", None)
            if catalog is not None:
                for p in paths:
                    ids.extend(int(i) for i in catalog.ids_with_prefix(str(p)))
            hits = [index.get(i) for i in dict.fromkeys(ids)]
            wanted = {str(p) for p in paths}
            return [h for h in hits if h is not None and h.path in wanted]

        return _as_dict(report), await self._run(self._io, lookup)

    async def remove(self, item_id: int) -> int:
        removed = int(await self._run(self._write, self.index.remove, [item_id]))
        await self._run(self._io, self.refresh_size)
        return removed


def _open_checked(settings: Settings) -> Any:
    """Open the index and read its whole catalog once, so a damaged page shows on /readyz at
    start-up rather than as failed searches later."""
    from indexer import Index

    index = Index.open(settings.index_dir, device=settings.device, precision=settings.precision)
    try:
        index.check()
    except BaseException:
        index.close()
        raise
    return index


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(n)


def _tune_faiss(dim: int) -> int | None:
    """Let FAISS use BLAS for batches of 4+ queries (process-wide); returns the old threshold.

    faiss-cpu 1.15 scans query by query while ``n_queries * dim`` is under
    ``distance_compute_blas_threshold`` (128,000 by default: up to 500 queries at dim 256), which
    makes a batch cost as much as its queries one by one. With BLAS a batch of 32 over 100k
    flat vectors (dim 256, 1 thread) takes 32 ms instead of 190; single queries keep the faster
    scan (4 ms against 14).
    """
    try:
        import faiss

        old = int(faiss.cvar.distance_compute_blas_threshold)
        faiss.cvar.distance_compute_blas_threshold = 4 * dim
        return old
    except (ImportError, AttributeError):
        return None


def _restore_faiss(threshold: int) -> None:
    with contextlib.suppress(ImportError, AttributeError):
        import faiss

        faiss.cvar.distance_compute_blas_threshold = threshold


def _as_dict(report: Any) -> dict[str, Any]:
    if hasattr(report, "to_dict"):
        return dict(report.to_dict())
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        data = dataclasses.asdict(report)
    elif isinstance(report, dict):
        data = dict(report)
    else:
        data = {k: v for k, v in vars(report).items() if not k.startswith("_")}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

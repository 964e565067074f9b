"""``Index``: the library API over one index directory (format: see ``indexer.layout``).

``Index.create`` makes a new index, ``Index.open`` opens an existing one (for reading it never
writes; a read-only volume works), ``Index.open_or_create`` is what ``clipsearch index`` does.
The FAISS side lives in ``indexer.faiss_states`` (readers see the old index or the new one, never
a torn one; a delta changes the index in place under the write side of a readers-writer lock,
never a copy of the whole index); writers (``add_images``, ``add_texts``, ``remove``,
``rebuild``) hold the directory's write lock, commit to the catalog in batches, then bring the
FAISS states current and checkpoint them.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from PIL import Image

from indexer import faiss_index as fx
from indexer import query_text
from indexer.catalog import Catalog, ItemRow
from indexer.decode import Skip, decode, read_bytes, resolve_max_pixels
from indexer.errors import IndexError_, QueryError
from indexer.faiss_states import FaissStates
from indexer.hub_penalty import HubPenalties
from indexer.layout import (
    CATALOG,
    MANIFEST,
    TARGETS,
    IndexSettings,
    Manifest,
    read_manifest,
    write_manifest,
)
from indexer.lock import WriteLock
from indexer.prefix_filter import PrefixSelectors
from indexer.probes import PROBE_TEXTS
from indexer.provenance import identity, mismatch
from indexer.results import Hit, IndexReport
from indexer.stats import index_stats
from indexer.texts import sha256_text
from models import hubness
from models.images import to_rgb

if TYPE_CHECKING:  # torch and open_clip load when an encoder is first needed, not at import
    from models.encoder import Encoder
    from models.lite_text import LiteTextEncoder

SMALL_BATCH = 8  # up to this many queries search with one OpenMP thread (see measured-facts)
INT64 = (-(1 << 63), (1 << 63) - 1)  # ids outside this cannot exist (SQLite INTEGER)


def _valid_id(i: int) -> bool:
    return INT64[0] <= i <= INT64[1]


class Index:
    """A searchable, incrementally updated collection of image (and text) vectors."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        catalog: Catalog,
        encoder: Encoder | None,
        device: str = "auto",
        precision: str | None = None,
        **opts: Any,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.catalog = catalog
        self._encoder = encoder
        self._device = device
        self._precision = precision
        self._lock = WriteLock(directory)
        self._encoder_lock = threading.Lock()
        self._faiss = FaissStates(directory, manifest, catalog, self.probe_vectors)
        self._probe_vectors: np.ndarray | None = None
        self._prefixes = PrefixSelectors(catalog)
        self._lite_text: LiteTextEncoder | None = None
        self.batch_size = int(opts.get("batch_size") or 32)
        self.workers = opts.get("workers")
        self.exclude = tuple(opts.get("exclude") or ())
        self.lock_timeout = float(opts.get("lock_timeout") or 0.0)
        self.max_pixels = resolve_max_pixels(opts.get("max_pixels") or manifest.max_pixels or None)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | Path,
        model: str | None = None,
        pretrained: str | None = None,
        index_type: str | None = "auto",
        encoder: Encoder | None = None,
        **opts: Any,
    ) -> Index:
        """Create a new index in ``directory`` (missing or without an index; one there is refused).

        ``index_type`` (auto|flat|hnsw|ivf|ivfpq) and the options ``max_memory`` (bytes or "2G"),
        ``flat_threshold``, ``recall_target`` and ``max_pixels`` are stored in the manifest.
        ``batch_size``, ``workers``, ``exclude``, ``device``, ``precision`` and ``lock_timeout``
        apply to this object only. A creation that fails leaves no directory behind.
        """
        from models.encoder import Encoder

        directory = Path(directory).expanduser().absolute()
        if (directory / MANIFEST).is_file():
            raise IndexError_(
                f"{directory} already holds an index: open it (Index.open or open_or_create)"
            )
        if directory.exists() and not directory.is_dir():
            raise IndexError_(f"{directory} is a file, not a directory: give a directory --index")
        device = opts.pop("device", "auto")
        precision = opts.pop("precision", None)
        settings = fx.updated_settings(IndexSettings(), index_type or "auto", opts)
        if encoder is None:
            encoder = Encoder.load(model, pretrained, device, precision or "auto")
        made = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(
                model=encoder.provenance.to_dict(),
                preprocess=repr(encoder.preprocess),
                index=settings,
                max_pixels=int(opts.get("max_pixels") or 0),
            )
            catalog = Catalog.create(directory / CATALOG, encoder.dim)
            index = cls(directory, manifest, catalog, encoder, device, precision, **opts)
            with index._lock.hold(index.lock_timeout):
                write_manifest(directory, manifest)  # the commit point of creation
                index._sync()
        except BaseException:
            if made and not (directory / MANIFEST).is_file():
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return index

    @classmethod
    def open(
        cls,
        directory: str | Path,
        encoder: Encoder | None = None,
        device: str = "auto",
        precision: str | None = None,
        *,
        lazy: bool = False,
        **opts: Any,
    ) -> Index:
        """Open an existing index; opening and searching write nothing to its directory.

        Without ``encoder`` the one named by the manifest is loaded (``precision`` defaults to the
        manifest's); a given encoder must match the manifest's model, weights hash and dim.
        ``lazy=True`` defers loading the encoder and the FAISS indexes until first needed
        (``info`` uses it).
        """
        directory = Path(directory).expanduser().absolute()
        manifest = read_manifest(directory)
        if encoder is not None:
            given = encoder.provenance.to_dict()
            if identity(given) != identity(manifest.model):
                raise mismatch(directory, manifest.model, given)
        catalog = Catalog(directory / CATALOG, int(manifest.model["dim"]))
        try:
            index = cls(directory, manifest, catalog, encoder, device, precision, **opts)
            index._faiss.check_against_catalog()
            if not lazy:
                _ = index.encoder
                index._faiss.refresh()
        except BaseException:
            catalog.close()
            raise
        return index

    @classmethod
    def open_or_create(
        cls,
        directory: str | Path,
        model: str | None = None,
        pretrained: str | None = None,
        index_type: str | None = None,
        encoder: Encoder | None = None,
        **opts: Any,
    ) -> Index:
        """Open the index in ``directory`` (checking the model; changed options given here are
        stored, rebuilding FAISS if needed), or create one there (see :meth:`create`)."""
        directory = Path(directory).expanduser().absolute()
        if not (directory / MANIFEST).is_file():
            return cls.create(directory, model, pretrained, index_type or "auto", encoder, **opts)
        device = opts.pop("device", "auto")
        precision = opts.pop("precision", None)
        built = read_manifest(directory).model
        if encoder is None and (model is not None or pretrained is not None):
            if model is not None and model != built["model"]:
                given = f"--model {model} --pretrained {pretrained or '(default)'} was given"
                raise mismatch(directory, built, given)
            from models.encoder import Encoder

            encoder = Encoder.load(model or built["model"], pretrained, device, precision or "auto")
        index = cls.open(
            directory, encoder=encoder, device=device, precision=precision, lazy=True, **opts
        )
        try:
            _ = index.encoder
            manifest = index.manifest
            new = fx.updated_settings(manifest.index, index_type, opts)
            max_pixels = int(opts["max_pixels"]) if opts.get("max_pixels") else manifest.max_pixels
            if new != manifest.index or max_pixels != manifest.max_pixels:
                with index._lock.hold(index.lock_timeout):
                    manifest.index, manifest.max_pixels = new, max_pixels
                    write_manifest(directory, manifest)
                    index.max_pixels = resolve_max_pixels(max_pixels or None)
                    index._sync()
            else:
                index._faiss.refresh()
        except BaseException:
            index.close()
            raise
        return index

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from models.encoder import Encoder

            with self._encoder_lock:
                if self._encoder is None:
                    m = self.manifest.model
                    encoder = Encoder.load(
                        m["model"],
                        m["pretrained"],
                        self._device,
                        # The host's fastest, not the builder's: precision is no part of identity.
                        self._precision or "auto",
                    )
                    given = encoder.provenance.to_dict()
                    if identity(given) != identity(m):
                        raise mismatch(self.directory, m, given)
                    self._encoder = encoder
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self.manifest.model["dim"])

    def close(self) -> None:
        self._faiss.clear()
        self.catalog.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload_if_changed(self) -> bool:
        """Pick up what other processes committed; True if a new index was swapped in."""
        return self._faiss.reload_if_changed()

    def check(self) -> None:
        """Read the whole catalog; a damaged one raises ``IndexDamagedError`` (the service's
        readiness check, so a damaged page is found at start-up, not by the first search)."""
        self.catalog.check()

    # -- searching -----------------------------------------------------------------------------

    @staticmethod
    def _kind(target: str) -> str:
        if target not in TARGETS:
            raise QueryError(f"unknown target {target!r}: use 'images' or 'texts'")
        return TARGETS[target]

    def search_text(
        self, query: str, k: int = 10, target: str = "images", path_prefix: str | None = None
    ) -> list[Hit]:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the text query is empty: give some words to search for")
        self._check(k, target, path_prefix)
        vector = self.embed_texts([query.strip()])
        specific = [hubness.specific(query)]
        return self.search_vectors(vector, k, target, path_prefix, specific)[0]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors of ``texts``: by the loaded encoder, else by the index's torch-free
        text tower when it has one (``indexer.query_text``), else by the encoder loaded now."""
        encoder: Encoder | LiteTextEncoder
        if self._encoder is None and self._lite_text is None:
            self._lite_text = query_text.load(self.directory, self.manifest.model)
        if self._encoder is None and self._lite_text is not None:
            encoder = self._lite_text
        else:
            encoder = self.encoder
        return encoder.encode_texts(list(texts))

    def probe_vectors(self) -> np.ndarray:
        """The text probes (``indexer.probes``) embedded by this index's model, for tuning."""
        if self._probe_vectors is None:
            self._probe_vectors = self.embed_texts(PROBE_TEXTS)
        return self._probe_vectors

    def embed_image(self, image: Image.Image | str | Path) -> np.ndarray:
        """The vector of one image (a file is decoded as the indexer does: pixel cap, EXIF)."""
        if not isinstance(image, Image.Image):
            if not Path(image).is_file():
                raise QueryError(f"cannot use {image} as a query image: no such file")
            try:
                decoded = decode(read_bytes(str(image)), self.max_pixels, self.encoder.image_size)
            except Skip as s:
                raise QueryError(
                    f"cannot use {image} as a query image: {s.reason} ({s.detail})"
                ) from None
            image = decoded.image
        tensor = self.encoder.preprocess(to_rgb(image))
        return self.encoder.encode_image_tensor(tensor[None])[0]

    def search_image(
        self,
        image: Image.Image | str | Path,
        k: int = 10,
        target: str = "images",
        path_prefix: str | None = None,
    ) -> list[Hit]:
        self._check(k, target, path_prefix)
        return self.search_vectors(self.embed_image(image)[None], k, target, path_prefix)[0]

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        target: str = "images",
        path_prefix: str | None = None,
    ) -> list[Hit]:
        v = np.asarray(vector)
        if v.ndim != 1:
            raise QueryError(
                f"search_vector takes one vector of shape ({self.dim},), not {v.shape}"
            )
        return self.search_vectors(v[None, :], k, target, path_prefix)[0]

    def _check(self, k: int, target: str, path_prefix: str | None) -> str:
        kind = self._kind(target)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise QueryError(f"k must be a whole number of at least 1, not {k!r}")
        if path_prefix is not None and kind != "image":
            raise QueryError("path_prefix only filters images; drop it for target 'texts'")
        return kind

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        target: str = "images",
        path_prefix: str | None = None,
        specific: Sequence[bool] | None = None,
    ) -> list[list[Hit]]:
        """Batched search: one list of hits (best first) per row of ``vectors`` (B, dim).

        ``specific`` marks the rows that are specific text queries (``models.hubness.specific``):
        among images they are ranked with the hubness correction when the model has a query bank
        (``indexer.hub_penalty``)."""
        kind = self._check(k, target, path_prefix)
        try:
            queries = fx.check_queries(vectors, self.dim)
        except ValueError as e:
            raise QueryError(str(e)) from None
        rows = np.zeros(len(queries), bool) if specific is None else np.asarray(specific, bool)
        if rows.shape != (len(queries),):
            raise QueryError(
                f"specific needs one flag per query ({len(queries)}), not {rows.shape}"
            )
        state = self._faiss.state(kind)
        with self._faiss.searching.read():  # no delta changes the index during the call
            return self._search_state(state, kind, queries, k, path_prefix, rows)

    @functools.cached_property
    def hub_penalties(self) -> HubPenalties | None:
        """The hubness correction of this index's model, when its directory has a query bank."""
        return HubPenalties.for_model(self.manifest.model)

    def _search_state(
        self,
        state: fx.FaissState,
        kind: str,
        queries: np.ndarray,
        k: int,
        path_prefix: str | None,
        specific: np.ndarray,
    ) -> list[list[Hit]]:
        if state.ntotal == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        selector, allowed = None, state.ntotal
        if path_prefix is not None:
            selector, allowed = self._prefixes.get(path_prefix)
            if allowed == 0:
                return [[] for _ in range(len(queries))]
        hub = self.hub_penalties if kind == "image" and specific.any() else None
        top = int(k) if hub is None else max(int(k), hubness.pool_size(int(k)))
        fetch = min(fx.candidates(state.spec, top, state.rerank_factor), state.ntotal)
        want = min(fetch, allowed)
        threads = faiss.omp_get_max_threads()
        if len(queries) <= SMALL_BATCH:
            faiss.omp_set_num_threads(1)  # per calling thread; single queries are faster so
        try:
            value = state.value
            while True:
                scores, ids = fx.search(state.index, state.spec, value, queries, fetch, selector)
                # Probing too little (a selective prefix, few vectors per list) leaves results
                # out: probe wider until every query has what exists, up to exhaustive.
                limit = fx.max_search_value(state.spec, state.ntotal)
                if value >= limit or (ids >= 0).sum(axis=1).min() >= want:
                    break
                value = min(limit, max(value, 1) * 4)
        finally:
            if len(queries) <= SMALL_BATCH:
                faiss.omp_set_num_threads(threads)
        lookup = self.catalog_lookup(kind)
        if state.spec.type == "ivfpq":  # lossy codes: re-score candidates with the float vectors
            scores, ids = fx.rerank(queries, ids, lookup, top)
        if hub is not None:
            scores, ids = hub.reorder(scores, ids, specific, state.gen, lookup)
        scores, ids = scores[:, : int(k)], ids[:, : int(k)]
        rows = self.catalog.rows(np.unique(ids[ids >= 0]).tolist())
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            hits = []
            for score, i in zip(srow, irow, strict=True):
                row = rows.get(int(i)) if i >= 0 else None
                if row is not None and row.status == "ok" and row.kind == kind:
                    hits.append(self._hit(row, float(score)))
            out.append(hits)
        return out

    def catalog_lookup(self, kind: str) -> fx.Lookup:
        """The catalog's float vectors of ``kind`` as a ``faiss_index.Lookup`` (re-ranking)."""
        return lambda wanted: self.catalog.vectors(kind, wanted.tolist())

    @staticmethod
    def _hit(row: ItemRow, score: float) -> Hit:
        return Hit(
            row.id,
            score,
            row.kind,
            row.path,
            row.text,
            row.width,
            row.height,
            taken=row.taken,
            camera=row.camera,
        )

    def get(self, id: int) -> Hit | None:
        """The stored item ``id`` (None if there is none: also for ids no catalog can hold)."""
        if not _valid_id(int(id)):
            return None
        row = self.catalog.get(id)
        if row is None or row.status != "ok":
            return None
        return self._hit(row, 0.0)

    # -- writing -------------------------------------------------------------------------------

    def _sync(self) -> None:
        """After a write (lock held): FAISS states current and checkpointed, and the torch-free
        query tower written for the model when it has an exportable text tower."""
        self._faiss.sync()
        if self._encoder is not None:
            query_text.ensure(self.directory, self._encoder, self.manifest.model)

    def add_images(
        self,
        paths: Sequence[str | Path],
        progress: bool = False,
        *,
        exclude: Sequence[str] | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> IndexReport:
        """Index files and folders (recursively) incrementally; see ``indexer.ingest``."""

        if isinstance(paths, (str, Path)):
            paths = [paths]
        encoder = self.encoder
        with self._lock.hold(self.lock_timeout):
            from indexer.ingest import index_images  # loads torch: only writers need it

            report = index_images(
                self.catalog,
                encoder,
                paths,
                exclude=tuple(exclude) if exclude is not None else self.exclude,
                skip_dirs=[self.directory],
                batch_size=batch_size or self.batch_size,
                workers=workers if workers is not None else self.workers,
                max_pixels=self.max_pixels,
                progress=progress,
            )
            self._sync()
        return report

    def add_texts(self, texts: Sequence[str], progress: bool = False) -> IndexReport:
        """Add texts (captions, labels, tags) to the text corpus; duplicates are unchanged."""
        t0 = time.perf_counter()
        report = IndexReport()
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        clean = []
        for t in texts:
            t = " ".join(str(t).split())
            if t and t not in seen:
                seen.add(t)
                clean.append(t)
        encoder = self.encoder
        with self._lock.hold(self.lock_timeout):
            present = self.catalog.existing_texts(clean)
            report.unchanged = len(present)
            todo = [t for t in clean if t not in present]
            bar = None
            if progress and todo:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), unit="text", desc="embedding texts", dynamic_ncols=True)
            step = max(1, self.batch_size * 2)
            try:
                for i in range(0, len(todo), step):
                    chunk = todo[i : i + step]
                    vectors = encoder.encode_texts(chunk, batch_size=step)
                    with self.catalog.write() as w:
                        for text, vec in zip(chunk, vectors, strict=True):
                            report.ids.append(w.put_text(text, sha256_text(text), vec))
                    report.indexed += len(chunk)
                    report.embedded += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            self._sync()
        report.seconds = time.perf_counter() - t0
        return report

    def remove(self, ids: Sequence[int]) -> int:
        """Delete items (images or texts) by id; returns how many existed."""
        ids = [int(i) for i in ids if _valid_id(int(i))]
        if not ids:
            return 0
        with self._lock.hold(self.lock_timeout):
            with self.catalog.write() as w:
                n = w.delete(ids)
            self._sync()
        return n

    def rebuild(self) -> None:
        """Rebuild both FAISS indexes from the catalog's vectors (no re-embedding)."""
        with self._lock.hold(self.lock_timeout):
            self._faiss.rebuild()

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts, model, index types, recall, sizes, damage and format version (``info``), and
        the hubness correction sentence queries get (None without a query bank)."""
        stats = index_stats(
            self.directory, self.manifest, self.catalog, self._faiss, self.max_pixels
        )
        hub = self.hub_penalties
        stats["hubness"] = None
        if hub is not None:
            stats["hubness"] = {
                "bank": len(hub.bank.vectors),
                "k": hub.bank.k,
                "weight": hub.bank.weight,
            }
        return stats

"""``Index``: the library API over one index directory (format: see ``indexer.layout``).

Thread safety: searches read ``self._states`` (a dict that is replaced, never mutated) once and
search under the read side of a readers-writer lock. Writers (``add_images``, ``add_texts``,
``remove``) hold the directory's write lock and commit to the catalog in batches; a delta is then
applied to the FAISS index in place under the write side (never a copy of the whole index), a
rebuild is made on the side; either is swapped in under a lock.
``reload_if_changed`` does the same for changes another process committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
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
from indexer.errors import IndexError_, ModelMismatchError, QueryError
from indexer.layout import (
    CATALOG,
    FORMAT_VERSION,
    INDEX_TYPES,
    MANIFEST,
    TARGETS,
    IndexSettings,
    Manifest,
    list_checkpoints,
    read_manifest,
    remove_stale_files,
    remove_tmp_files,
    write_manifest,
)
from indexer.lock import WriteLock
from indexer.results import Hit, IndexReport
from indexer.rwlock import ReadWriteLock
from indexer.texts import sha256_text
from models.images import to_rgb
from models.query_templates import embed_queries

if TYPE_CHECKING:  # torch and open_clip load when an encoder is first needed, not at import
    from models.encoder import Encoder
    from models.lite_text import LiteTextEncoder

log = logging.getLogger(__name__)

SMALL_BATCH = 8  # up to this many queries search with one OpenMP thread (see measured-facts)
PREFIX_CACHE = 16  # path_prefix selectors kept
KINDS = ("image", "text")


def _identity(prov: dict[str, Any]) -> tuple[str, str, int]:
    return (str(prov["model"]), str(prov["weights_sha256"]), int(prov["dim"]))


def _describe(prov: dict[str, Any]) -> str:
    sha = str(prov["weights_sha256"])[:16]
    return f"{prov['model']} (weights {prov['pretrained']}, sha256 {sha}, dim {prov['dim']})"


def _mismatch(
    directory: Path, built: dict[str, Any], given: dict[str, Any] | str
) -> ModelMismatchError:
    given_text = given if isinstance(given, str) else f"the encoder given is {_describe(given)}"
    return ModelMismatchError(
        f"the index in {directory} was built with {_describe(built)}, but {given_text}; "
        "vectors of different models cannot be compared. Pass "
        f"--model {built['model']} --pretrained {built['pretrained']} to use this index, or a new "
        "--index directory for the other model"
    )


def _settings(base: IndexSettings, index_type: str | None, opts: dict[str, Any]) -> IndexSettings:
    s = IndexSettings(**vars(base))
    if index_type is not None:
        if index_type not in INDEX_TYPES:
            raise IndexError_(
                f"index type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}"
            )
        s.type = index_type
    if "max_memory" in opts and opts["max_memory"] is not None:
        s.max_memory = fx.parse_bytes(opts["max_memory"])
    if opts.get("flat_threshold") is not None:
        s.flat_threshold = int(opts["flat_threshold"])
    if opts.get("recall_target") is not None:
        s.recall_target = float(opts["recall_target"])
    return s


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
        load: bool = True,
        **opts: Any,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.catalog = catalog
        self._encoder = encoder
        self._device = device
        self._precision = precision
        self._lock = WriteLock(directory)
        self._swap_lock = threading.RLock()
        self._searching = ReadWriteLock()
        self._encoder_lock = threading.Lock()
        self._states: dict[str, fx.FaissState] = {}
        self._lite_text: LiteTextEncoder | None = None
        self._prefix_cache: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._prefix_lock = threading.Lock()
        self.batch_size = int(opts.get("batch_size") or 32)
        self.workers = opts.get("workers")
        self.exclude = tuple(opts.get("exclude") or ())
        self.lock_timeout = float(opts.get("lock_timeout") or 0.0)
        self.max_pixels = resolve_max_pixels(opts.get("max_pixels") or manifest.max_pixels or None)
        if load:
            self._load_states()

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
        """Create an index in ``directory``, or open the one there (checking the model).

        ``index_type`` (auto|flat|hnsw|ivf|ivfpq) and the options ``max_memory`` (bytes or "2G"),
        ``flat_threshold``, ``recall_target`` and ``max_pixels`` are stored in the manifest; None
        keeps what an existing index has. ``batch_size``, ``workers``, ``exclude``, ``device``,
        ``precision`` and ``lock_timeout`` apply to this object only.
        """
        from models.encoder import Encoder

        directory = Path(directory).expanduser().absolute()
        device = opts.pop("device", "auto")
        precision = opts.pop("precision", None)
        if (directory / MANIFEST).is_file():
            manifest = read_manifest(directory)
            built = manifest.model
            if encoder is None and (model is not None or pretrained is not None):
                if model is not None and model != built["model"]:
                    given = f"--model {model} --pretrained {pretrained or '(default)'} was given"
                    raise _mismatch(directory, built, given)
                encoder = Encoder.load(
                    model or built["model"], pretrained, device, precision or built["precision"]
                )
            index = cls.open(
                directory, encoder=encoder, device=device, precision=precision, lazy=True, **opts
            )
            _ = index.encoder
            manifest = index.manifest
            new = _settings(manifest.index, index_type, opts)
            max_pixels = int(opts["max_pixels"]) if opts.get("max_pixels") else manifest.max_pixels
            if new != manifest.index or max_pixels != manifest.max_pixels:
                with index._lock.hold(index.lock_timeout):
                    manifest.index, manifest.max_pixels = new, max_pixels
                    write_manifest(directory, manifest)
                    index.max_pixels = resolve_max_pixels(max_pixels or None)
                    index._sync_all()
            else:
                index._load_states()
            return index

        if encoder is None:
            encoder = Encoder.load(model, pretrained, device, precision or "fp32")
        directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(
            model=encoder.provenance.to_dict(),
            preprocess=repr(encoder.preprocess),
            index=_settings(IndexSettings(), index_type or "auto", opts),
            max_pixels=int(opts.get("max_pixels") or 0),
        )
        catalog = Catalog(directory / CATALOG, encoder.dim)
        index = cls(directory, manifest, catalog, encoder, device, precision, load=False, **opts)
        with index._lock.hold(index.lock_timeout):
            write_manifest(directory, manifest)  # the commit point of creation
            index._sync_all()
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
        """Open an existing index.

        Without ``encoder`` the one named by the manifest is loaded (``precision`` defaults to the
        manifest's); a given encoder must match the manifest's model, weights hash and dim.
        ``lazy=True`` defers loading the encoder and the FAISS indexes until first needed
        (``info`` uses it).
        """
        directory = Path(directory).expanduser().absolute()
        manifest = read_manifest(directory)
        if encoder is not None:
            given = encoder.provenance.to_dict()
            if _identity(given) != _identity(manifest.model):
                raise _mismatch(directory, manifest.model, given)
        catalog = Catalog(directory / CATALOG, int(manifest.model["dim"]))
        index = cls(directory, manifest, catalog, encoder, device, precision, load=False, **opts)
        if not lazy:
            _ = index.encoder
            index._load_states()
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
                        self._precision or m.get("precision", "fp32"),
                    )
                    given = encoder.provenance.to_dict()
                    if _identity(given) != _identity(m):
                        raise _mismatch(self.directory, m, given)
                    self._encoder = encoder
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self.manifest.model["dim"])

    def close(self) -> None:
        with self._swap_lock:
            self._states = {}
        self.catalog.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- FAISS states --------------------------------------------------------------------------

    def _budgets(self, counts: dict[str, int]) -> dict[str, int | None]:
        budget = self.manifest.index.max_memory
        total = sum(counts.values())
        if budget is None or total == 0:
            return {k: budget for k in KINDS}
        return {k: int(budget * counts[k] / total) for k in KINDS}

    def _build(self, kind: str, spec: fx.Spec, gen: int) -> fx.FaissState:
        ids, vectors = self.catalog.vectors(kind)
        other = np.zeros((0, self.dim), np.float32)
        if spec.trained or spec.type == "hnsw":
            other_kind = "text" if kind == "image" else "image"
            other_ids = self.catalog.ids(other_kind)
            if len(other_ids):
                rng = np.random.default_rng(gen)
                pick = np.sort(
                    rng.choice(other_ids, size=min(len(other_ids), 20_000), replace=False)
                )
                _, other = self.catalog.vectors(other_kind, pick)
        return fx.build_state(
            kind, spec, self.dim, ids, vectors, other, gen, self.manifest.index.recall_target
        )

    def _current(self, kind: str, state: fx.FaissState | None) -> fx.FaissState:
        """``state`` brought up to the catalog's generation (a delta, or a rebuild when the right
        index for the data has changed); the caller holds ``_swap_lock``."""
        with self.catalog.snapshot():
            gen = self.catalog.generation()
            counts = {k: self.catalog.count_ok(k) for k in KINDS}
            spec = fx.choose_spec(
                self.manifest.index, counts[kind], self.dim, self._budgets(counts)[kind]
            )
            if state is None:
                for g in list_checkpoints(self.directory, kind):
                    if g <= gen:
                        try:
                            state = fx.load_checkpoint(self.directory, kind, g, self.dim)
                            break
                        except FileNotFoundError:  # removed by a writer meanwhile
                            continue
            if state is not None and (
                not self._fits(state.spec, spec) or self._needs_mixed_training(state, counts)
            ):
                state = None  # rebuild below
            if state is not None and state.gen == gen:
                return state
            if state is not None:
                remove, add_ids, add_vecs = self.catalog.delta(kind, state.gen)
                with self._searching.write():  # the delta changes the index searches use
                    new = fx.apply_delta(state, remove, add_ids, add_vecs, gen)
                if new is not None:
                    return new
            if counts[kind] == 0:
                return fx.empty_state(kind, self.dim, gen)
            return self._build(kind, spec, gen)

    @staticmethod
    def _needs_mixed_training(state: fx.FaissState, counts: dict[str, int]) -> bool:
        """A trained index that learnt from one modality while the other now has vectors: retrain
        (text queries against an image-only quantizer lose recall: clip-retrieval #76)."""
        if not state.spec.trained:
            return False
        other = "text" if state.kind == "image" else "image"
        trained_other = state.info.get("trained_on", {}).get("other_modality", 0)
        return trained_other == 0 and counts[other] >= fx.MIN_OTHER_FOR_MIXING

    @staticmethod
    def _fits(have: fx.Spec, want: fx.Spec) -> bool:
        """Whether an index built as ``have`` still suits data that calls for ``want``."""
        if have.type != want.type:
            return False
        if have.trained:
            if not (want.nlist / 4 <= have.nlist <= want.nlist * 4):
                return False
            if have.type == "ivfpq" and (have.pq_m > want.pq_m or have.pq_nbits < want.pq_nbits):
                return False
        return True

    def _load_states(self) -> None:
        with self._swap_lock:
            states = {k: self._current(k, self._states.get(k)) for k in KINDS}
            self._states = states
        if any(not self._checkpointed(s) for s in states.values()) and self._lock.try_acquire(0):
            try:
                for s in states.values():
                    self._checkpoint(s)
            finally:
                self._lock.release()

    def _checkpointed(self, state: fx.FaissState) -> bool:
        return state.gen in list_checkpoints(self.directory, state.kind)

    def _checkpoint(self, state: fx.FaissState) -> None:
        """Write ``state`` as the newest checkpoint (the caller holds the write lock)."""
        if not self._checkpointed(state):
            fx.save_checkpoint(self.directory, state)
        remove_stale_files(self.directory, state.kind, state.gen)

    def _sync_all(self) -> None:
        """After a write: bring both states current, publish them, checkpoint (lock held)."""
        remove_tmp_files(self.directory)
        with self._swap_lock:
            states = {k: self._current(k, self._states.get(k)) for k in KINDS}
            self._states = states
        for s in states.values():
            self._checkpoint(s)
        if self._encoder is not None:
            query_text.ensure(self.directory, self._encoder, self.manifest.model)

    def reload_if_changed(self) -> bool:
        """Pick up what other processes committed; True if a new index was swapped in."""
        gen = self.catalog.generation()
        states = self._states
        if states and all(s.gen == gen for s in states.values()):
            return False
        with self._swap_lock:
            old = self._states
            new = {k: self._current(k, old.get(k)) for k in KINDS}
            changed = any(new[k] is not old.get(k) for k in KINDS)
            self._states = new
        return changed

    def _state(self, kind: str) -> fx.FaissState:
        states = self._states
        if kind not in states:
            self._load_states()
            states = self._states
        return states[kind]

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
        return self.search_vectors(vector, k, target, path_prefix)[0]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors of ``texts``: by the loaded encoder, else by the index's torch-free
        text tower when it has one (``indexer.query_text``), else by the encoder loaded now;
        short queries through prompt templates (``models.query_templates``)."""
        encoder: Encoder | LiteTextEncoder
        if self._encoder is None and self._lite_text is None:
            self._lite_text = query_text.load(self.directory, self.manifest.model)
        if self._encoder is None and self._lite_text is not None:
            encoder = self._lite_text
        else:
            encoder = self.encoder
        return embed_queries(encoder.encode_texts, list(texts))

    def embed_image(self, image: Image.Image | str | Path) -> np.ndarray:
        """The vector of one image (a file is decoded as the indexer does: pixel cap, EXIF)."""
        if not isinstance(image, Image.Image):
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
    ) -> list[list[Hit]]:
        """Batched search: one list of hits (best first) per row of ``vectors`` (B, dim)."""
        kind = self._check(k, target, path_prefix)
        try:
            queries = fx.check_queries(vectors, self.dim)
        except ValueError as e:
            raise QueryError(str(e)) from None
        state = self._state(kind)
        with self._searching.read():  # no delta changes the index during the call
            return self._search_state(state, kind, queries, k, path_prefix)

    def _search_state(
        self,
        state: fx.FaissState,
        kind: str,
        queries: np.ndarray,
        k: int,
        path_prefix: str | None,
    ) -> list[list[Hit]]:
        if state.ntotal == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        selector, allowed = None, state.ntotal
        if path_prefix is not None:
            selector, allowed = self._prefix_selector(path_prefix)
            if allowed == 0:
                return [[] for _ in range(len(queries))]
        fetch = min(int(k), state.ntotal)
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

    def _prefix_selector(self, path_prefix: str) -> tuple[faiss.IDSelector | None, int]:
        """An id selector for the images under ``path_prefix`` (cached per catalog generation)."""
        prefix = os.path.abspath(os.path.expanduser(path_prefix))
        if path_prefix.endswith(os.sep) and not prefix.endswith(os.sep):
            prefix += os.sep
        key = (prefix, self.catalog.generation())
        with self._prefix_lock:
            hit = self._prefix_cache.get(key)
            if hit is not None:
                self._prefix_cache.move_to_end(key)
                return hit
        allowed = self.catalog.ids_with_prefix(prefix)
        entry = (faiss.IDSelectorBatch(allowed) if allowed.size else None, int(allowed.size))
        with self._prefix_lock:
            self._prefix_cache[key] = entry
            while len(self._prefix_cache) > PREFIX_CACHE:
                self._prefix_cache.popitem(last=False)
        return entry

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
        row = self.catalog.get(id)
        if row is None or row.status != "ok":
            return None
        return self._hit(row, 0.0)

    # -- writing -------------------------------------------------------------------------------

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
        from indexer.ingest import index_images

        if isinstance(paths, (str, Path)):
            paths = [paths]
        encoder = self.encoder
        with self._lock.hold(self.lock_timeout):
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
            self._sync_all()
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
            self._sync_all()
        report.seconds = time.perf_counter() - t0
        return report

    def remove(self, ids: Sequence[int]) -> int:
        """Delete items (images or texts) by id; returns how many existed."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self._lock.hold(self.lock_timeout):
            with self.catalog.write() as w:
                n = w.delete(ids)
            self._sync_all()
        return n

    def rebuild(self) -> None:
        """Rebuild both FAISS indexes from the catalog's vectors (no re-embedding)."""
        with self._lock.hold(self.lock_timeout):
            with self._swap_lock:
                self._states = {}
            for kind in KINDS:
                for g in list_checkpoints(self.directory, kind):
                    remove_stale_files(self.directory, kind, g + 1)
            self._sync_all()

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts, model, index types, recall, sizes and format version (``info --json``)."""
        with self.catalog.snapshot():
            counts = self.catalog.counts()
            gen = self.catalog.generation()
        m = self.manifest.model
        indexes: dict[str, Any] = {}
        faiss_bytes = 0
        for target, kind in TARGETS.items():
            state = self._states.get(kind)
            if state is not None:
                desc = state.describe()
            else:
                desc = {"type": None, "note": "not loaded"}
                for g in list_checkpoints(self.directory, kind):
                    try:
                        meta = fx.read_checkpoint_info(self.directory, kind, g)
                    except (OSError, ValueError):
                        continue
                    spec = meta["spec"]
                    param = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(
                        spec["type"]
                    )
                    desc = {
                        "type": spec["type"],
                        "factory": spec["factory"],
                        "vectors": meta["vectors"],
                        "generation": meta["generation"],
                        **({param: meta.get("value")} if param else {}),
                        **meta.get("info", {}),
                    }
                    break
            files = list_checkpoints(self.directory, kind)
            if files:
                size = (self.directory / f"{target}.{files[0]}.faiss").stat().st_size
                desc["file_bytes"] = size
                faiss_bytes += size
            desc["up_to_date"] = desc.get("generation") == gen
            indexes[target] = desc
        catalog_bytes = self.catalog.file_bytes()
        image_index = indexes["images"]
        return {
            "directory": str(self.directory),
            "format_version": self.manifest.format_version,
            "library_format_version": FORMAT_VERSION,
            "schema_version": self.catalog.schema_version,
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
            "preprocess": self.manifest.preprocess,
            "index_type": image_index.get("type"),
            "index_settings": vars(self.manifest.index).copy(),
            "max_pixels": self.max_pixels,
            "recall@10": image_index.get("recall@10"),
            "indexes": indexes,
            "generation": gen,
            "sizes": {
                "catalog_bytes": catalog_bytes,
                "faiss_bytes": faiss_bytes,
                "total_bytes": catalog_bytes + faiss_bytes,
            },
        }

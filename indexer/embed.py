"""``clipsearch embed``: images or texts → embedding shards (``indexer.shards``), without an index.

The job: scan the sources, leave out what finished shards already hold (a rerun resumes), split
the rest into shards of ``shard_size`` items, run them through an engine and write each shard as
soon as all its items are back. Engines differ only in where decoding and encoding run:

* ``local``: this process, with the indexer's own decode pipeline (``indexer.pipeline``);
* ``ray``: a Ray cluster (``indexer.embed_ray``): decode + preprocess as Ray Data tasks, encoding
  in an actor pool (one GPU per actor when the cluster has GPUs).

Both give the same vectors for the same files, and record bad files with the indexer's reasons.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from indexer import shards as sh
from indexer.decode import WORKER_NICE, resolve_max_pixels
from indexer.errors import IndexError_
from indexer.layout import DEFAULT_SHARD_SIZE, ENGINES
from indexer.results import IndexReport
from indexer.scan import Found, scan
from indexer.texts import sha256_text

if TYPE_CHECKING:  # torch and the model code load in _load, which a Ray job's driver never calls
    from models.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass
class EmbedOptions:
    """How to run a job; ``pool_size``, ``actor_threads`` and ``address`` apply to Ray only."""

    model: str | None = None
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    engine: str = "local"
    address: str | None = None
    batch_size: int = 32
    shard_size: int = DEFAULT_SHARD_SIZE
    pool_size: int = 1
    actor_threads: int | None = None
    workers: int | None = None
    max_pixels: int | None = None
    exclude: Sequence[str] = ()
    progress: bool = False


@dataclass
class EmbedReport(IndexReport):
    """An :class:`IndexReport` whose ``unchanged`` are items finished shards already held."""

    shards: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "shards": list(self.shards)}

    def summary(self) -> str:
        return f"wrote {len(self.shards)} shards: {super().summary()}"


@dataclass
class Result:
    """What an engine hands back for one item, by its position in the job."""

    pos: int
    vector: np.ndarray | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    detail: str = ""


class Collector:
    """Gathers results by position and writes each shard once it is complete."""

    def __init__(
        self,
        root: Path,
        modality: sh.Modality,
        items: Sequence[Found] | Sequence[str],
        dim: int,
        first: int,
        shard_size: int,
        report: EmbedReport,
        progress: bool = False,
    ) -> None:
        self.root = root
        self.modality = modality
        self.items = items
        self.dim = dim
        self.first = first
        self.shard_size = shard_size
        self.report = report
        self.pending: dict[int, dict[int, Result]] = {}
        self.bar = None
        if progress and items:
            from tqdm import tqdm

            unit = "img" if modality.kind == "image" else "text"
            self.bar = tqdm(total=len(items), unit=unit, desc="embedding", dynamic_ncols=True)

    def shard_count(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def add(self, result: Result) -> None:
        j = result.pos // self.shard_size
        got = self.pending.setdefault(j, {})
        got[result.pos] = result
        if self.bar is not None:
            self.bar.update(1)
        size = min(self.shard_size, len(self.items) - j * self.shard_size)
        if len(got) == size:
            self._write(j, [got[p] for p in sorted(got)])
            del self.pending[j]

    def _write(self, j: int, results: list[Result]) -> None:
        number = self.first + j
        ok = [r for r in results if r.reason is None]
        vectors = np.stack([r.vector for r in ok]) if ok else np.zeros((0, self.dim), np.float32)
        if self.modality.kind == "text":
            texts = [self.items[r.pos] for r in ok]
            sh.write_shard(
                self.root, self.modality, number, vectors,
                {"text": texts, "sha256": [r.sha256 for r in ok]},
            )  # fmt: skip
        else:
            files: list[Found] = [self.items[r.pos] for r in results]  # type: ignore[misc]
            rows = {
                "path": [files[k].path for k, r in enumerate(results) if r.reason is None],
                "sha256": [r.sha256 for r in ok],
                "size": [files[k].size for k, r in enumerate(results) if r.reason is None],
                "mtime_ns": [files[k].mtime_ns for k, r in enumerate(results) if r.reason is None],
                "width": [r.width for r in ok],
                "height": [r.height for r in ok],
            }
            bad = [(files[k], r) for k, r in enumerate(results) if r.reason is not None]
            skipped = {
                "path": [f.path for f, _ in bad],
                "size": [f.size if f.reason is None else None for f, _ in bad],
                "mtime_ns": [f.mtime_ns if f.reason is None else None for f, _ in bad],
                "reason": [r.reason for _, r in bad],
                "detail": [r.detail[:500] for _, r in bad],
            }
            sh.write_shard(self.root, self.modality, number, vectors, rows, skipped)
            for f, r in bad:
                self.report.skip(f.path, r.reason or "unreadable", r.detail)
        self.report.indexed += len(ok)
        self.report.embedded += len(ok)
        self.report.shards.append(number)

    def close(self, check: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
        if check and self.pending:
            raise IndexError_(
                f"{len(self.pending)} shards did not get all their results; rerun to finish them"
            )


def _remove_unfinished(root: Path, modality: sh.Modality) -> None:
    """Vector files of shards a killed run never finished (their items are redone)."""
    done = set(sh.finished(root, modality))
    emb_dir = root / modality.emb_dir
    if emb_dir.is_dir():
        for p in emb_dir.iterdir():
            m = sh._SHARD_RE.search(p.name)
            if m and int(m.group(1)) not in done:
                with contextlib.suppress(OSError):
                    p.unlink()


def _check(opts: EmbedOptions) -> None:
    if opts.engine not in ENGINES:
        raise IndexError_(f"--engine must be one of {', '.join(ENGINES)}, not {opts.engine!r}")
    if opts.shard_size < 1 or opts.batch_size < 1 or opts.pool_size < 1:
        raise IndexError_("--shard-size, --batch-size and --pool-size must be at least 1")


def _load(opts: EmbedOptions) -> Encoder:
    # With Ray the encoders run in actors; the model that only describes itself loads on the CPU.
    from models.encoder import Encoder

    device = opts.device if opts.engine == "local" else "cpu"
    return Encoder.load(opts.model, opts.pretrained, device, opts.precision)


@dataclass(frozen=True)
class ModelFacts:
    """What a job needs of its model beside encoding: its identity (``Provenance.to_dict()`` and
    the preprocessing), which the output directory's manifest records and checks."""

    provenance: dict[str, Any]
    preprocess: str

    @classmethod
    def of(cls, encoder: Encoder) -> ModelFacts:
        return cls(encoder.provenance.to_dict(), repr(encoder.preprocess))

    @property
    def dim(self) -> int:
        return int(self.provenance["dim"])


class Engine(Protocol):
    """Where a job's items are decoded and encoded: this process, or a Ray cluster."""

    def facts(self) -> ModelFacts: ...

    def image_results(
        self, todo: Sequence[Found], decodable: list[int], max_pixels: int
    ) -> Iterator[Result]: ...

    def text_results(self, todo: Sequence[str]) -> Iterator[Result]: ...


class LocalEngine:
    """The model loaded in this process, fed by the indexer's decode pipeline."""

    def __init__(self, opts: EmbedOptions) -> None:
        self.opts = opts
        self.encoder = _load(opts)

    def facts(self) -> ModelFacts:
        return ModelFacts.of(self.encoder)

    def image_results(
        self, todo: Sequence[Found], decodable: list[int], max_pixels: int
    ) -> Iterator[Result]:
        from indexer.pipeline import DecodeDataset, batches, default_workers

        encoder, opts = self.encoder, self.opts
        dataset = DecodeDataset(
            [todo[p].path for p in decodable], encoder.preprocess, max_pixels, encoder.image_size
        )
        on_cpu = encoder.device.type == "cpu"
        workers = opts.workers if opts.workers is not None else default_workers(on_cpu)
        start = 0
        for batch in batches(dataset, opts.batch_size, workers, worker_nice=WORKER_NICE * on_cpu):
            vectors = encoder.encode_image_tensor(batch.tensor) if batch.tensor is not None else []
            by_row = dict(zip(batch.rows, vectors, strict=True))
            for k, item in enumerate(batch.items):
                pos = decodable[start + k]
                yield Result(
                    pos, by_row.get(k), item.sha256, item.width, item.height, item.reason,
                    item.detail,
                )  # fmt: skip
            start += len(batch.items)

    def text_results(self, todo: Sequence[str]) -> Iterator[Result]:
        step = max(1, self.opts.batch_size)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            vectors = self.encoder.encode_texts(chunk, batch_size=step)
            for k, (text, vec) in enumerate(zip(chunk, vectors, strict=True)):
                yield Result(start + k, vec, sha256_text(text))


@contextlib.contextmanager
def _engine(opts: EmbedOptions, needed: bool) -> Iterator[Engine]:
    """The job's engine for the ``with`` block. A Ray job joins its cluster (or starts a local one,
    stopped at the block's end) and loads no model here; a job with nothing to encode loads the
    model here only to know it."""
    if opts.engine != "ray" or not needed:
        yield LocalEngine(opts)
        return
    from indexer.embed_ray import RayEngine, connected

    with connected(opts.address):
        yield RayEngine(opts)


def _write_all(
    root: Path,
    modality: sh.Modality,
    items: Sequence[Found] | Sequence[str],
    engine: Engine,
    results: Iterable[Result],
    opts: EmbedOptions,
    report: EmbedReport,
    t0: float,
    unread: Sequence[Result] = (),
) -> EmbedReport:
    """Check ``root`` against the model and write ``unread`` (items the scan could not read) and
    the engine's ``results`` into its shards.

    The check waits for the engine's first result: a Ray job's decode tasks and encoder actors
    start with it, beside the task that describes the model (docs/benchmarks.md, issue 11 (a))."""
    results = iter(results)
    first = list(itertools.islice(results, 1))
    facts = engine.facts()
    sh.open_for_writing(root, facts.provenance, facts.preprocess)
    _remove_unfinished(root, modality)  # vectors of shards a killed run left unfinished
    shard = sh.next_shard(root, modality)
    collector = Collector(
        root, modality, items, facts.dim, shard, opts.shard_size, report, opts.progress
    )
    log.info(
        "%d %s to embed in %d shards from #%d (%s engine), %d in finished shards",
        len(items), modality.kind + "s", collector.shard_count(), shard, opts.engine,
        report.unchanged,
    )  # fmt: skip
    return _drain(collector, itertools.chain(unread, first, results), t0)


def embed_images(
    paths: Sequence[str | Path], out: str | Path, opts: EmbedOptions | None = None
) -> EmbedReport:
    """Embed the images under ``paths`` into shards in ``out``; finished shards are kept."""
    opts = opts or EmbedOptions()
    t0 = time.perf_counter()
    root = Path(out).expanduser().absolute()
    _check(opts)
    found = scan(paths, opts.exclude, skip_dirs=[root])
    done = sh.covered(root, sh.IMAGES)
    todo = [f for f in found.files if f.path not in done]
    decodable = [pos for pos, f in enumerate(todo) if f.reason is None]
    unread = [Result(p, reason=f.reason, detail=f.detail) for p, f in enumerate(todo) if f.reason]
    report = EmbedReport(unchanged=len(found.files) - len(todo))
    with _engine(opts, bool(decodable)) as engine:
        results: Iterable[Result] = ()
        if decodable:
            results = engine.image_results(todo, decodable, resolve_max_pixels(opts.max_pixels))
        return _write_all(root, sh.IMAGES, todo, engine, results, opts, report, t0, unread)


def _drain(collector: Collector, results: Iterable[Result], t0: float) -> EmbedReport:
    """Hand every result to ``collector`` (which writes the shards); the finished report."""
    try:
        for result in results:
            collector.add(result)
    except BaseException:
        collector.close(check=False)  # the engine's own error says more than missing results
        raise
    collector.close()
    collector.report.seconds = time.perf_counter() - t0
    return collector.report


def embed_texts(
    texts: Sequence[str], out: str | Path, opts: EmbedOptions | None = None
) -> EmbedReport:
    """Embed a text corpus into text shards in ``out`` (duplicates and blanks dropped)."""
    opts = opts or EmbedOptions()
    t0 = time.perf_counter()
    root = Path(out).expanduser().absolute()
    _check(opts)
    done = sh.covered(root, sh.TEXTS)
    clean = list(dict.fromkeys(" ".join(str(t).split()) for t in texts))
    clean = [t for t in clean if t]
    todo = [t for t in clean if t not in done]
    report = EmbedReport(unchanged=len(clean) - len(todo))
    with _engine(opts, bool(todo)) as engine:
        results = engine.text_results(todo) if todo else ()
        return _write_all(root, sh.TEXTS, todo, engine, results, opts, report, t0)

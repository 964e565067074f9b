"""The Ray engine of ``clipsearch embed``: Ray Data decode tasks feeding an encoder actor pool.

The job's file list becomes a dataset of (pos, path) blocks; ``_decode_batch`` runs as stateless
tasks wherever the cluster has CPUs (reading, hashing, decoding and the PIL part of preprocessing
with the indexer's own code, so bad files get the same reasons); ``ImageEncoderActor`` holds the
model once per actor, turns the uint8 crops into the model's input (the tensor part of
preprocessing) and encodes them, on its main thread: one GPU per actor when the cluster has GPUs,
else ``actor_threads`` CPU threads each. Results stream back to this process, which writes shards.

Crops cross the object store (and a cluster's network) as uint8, a quarter of the bytes of the
float input; decode tasks run at the local pipeline's lower priority, since on a node that also
encodes on its CPUs a decode process that preempts one of the encoder's OpenMP threads stalls the
whole team. (On this project's 2-core machine neither moved Ray's wall time measurably against the
local pipeline: docs/benchmarks.md, issue 11 (a).)

The driver loads no model, and nothing loads it twice. The encoder actors say what the job needs
of it (provenance, preprocessing: the output directory's manifest checks them) with their first
results. Decode tasks start at once when the model directory records its preprocessing
(``preprocess_cfg`` in ``open_clip_config.json``, as the project's models and open_clip's hub
models do): :func:`planned_decode` reads it without torch, so crops are ready, made on the cores
the actors' start leaves idle, by the time the encoder is; the actors check the plan against
their model's own transform. For other models :func:`describe`, a task, loads the model to
say how to decode, and the first decode tasks wait for it.

Decode tasks start light: this module imports no torch, open_clip or model code at the top, and
open_clip's eval transform travels as :class:`ResizeCrop`, its PIL-only twin. Ray starts (and,
once idle, stops) decode worker processes throughout a job; each import of torch and open_clip
cost ~9 s of CPU on this project's 2-core machine, taken from the encoder.

Files are read by path on whichever node runs the task: on a multi-node cluster the sources must
be on storage every node mounts at the same path (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from indexer.decode import WORKER_NICE, decode_file
from indexer.errors import IndexError_
from indexer.texts import sha256_text
from models.errors import ModelError

if TYPE_CHECKING:  # decode tasks import this module: no torch, open_clip or model code here
    from indexer.embed import EmbedOptions, ModelFacts, Result
    from indexer.scan import Found
    from models.encoder import Encoder

log = logging.getLogger(__name__)
BLOCK_BATCHES = 4  # encoder batches per input block: enough blocks for every decode task
# Decoding needs a fraction of a core per image stream; a reservation unlike the actors' also keeps
# Ray from fusing decode into the encoder actors, so decode tasks run beside them.
DECODE_CPUS = 0.5


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local one); True if this call started Ray."""
    try:
        import ray
    except ImportError:
        raise IndexError_(
            "the ray engine needs Ray: pip install 'ray[data]' (or use --engine local)"
        ) from None
    if ray.is_initialized():
        return False
    # A throwaway local cluster runs without the dashboard's processes, which would take CPU, and
    # with its workers at normal priority: Ray renices them to 15 by default, below the driver and
    # Ray's own services, which starves a CPU encoder actor (decode tasks renice themselves). Nor
    # does it start idle workers ahead of need: beside the driver's model load they delayed the
    # encoder's first batch by ~5 s on this project's 2-core machine (docs/benchmarks.md, 11 (a)).
    system = {
        "worker_niceness": 0,
        "enable_worker_prestart": False,
        "prestart_worker_first_driver": False,
    }
    local = {"include_dashboard": False, "_system_config": system} if address is None else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **local)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise IndexError_(
            f"cannot reach a Ray cluster at {address or 'a new local instance'}: {e}; start one "
            "with 'ray start --head' or leave out --address to run Ray on this machine"
        ) from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return True


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """The Ray cluster of one job for the ``with`` block: joined, or a local instance started,
    which stops at the block's end."""
    started = _connect(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _actor_resources(
    opts: EmbedOptions, decode_cpus: float = 0.0
) -> tuple[dict[str, Any], int | None]:
    """(Ray options of one encoder actor, torch threads it should use), once the cluster is known
    to hold ``opts.pool_size`` such actors beside ``decode_cpus`` (:func:`_check_room`).

    A CPU actor reserves one CPU and sets its torch threads itself. Ray starts it with
    ``OMP_NUM_THREADS=1``; setting the thread count in the environment instead (a ``runtime_env``)
    encoded no faster since the calls run on the actor's main thread, and its worker process took
    ~1.8 s longer to start (docs/benchmarks.md, issue 11 (a))."""
    import ray

    cluster = ray.cluster_resources()
    if cluster.get("GPU", 0) >= 1 and opts.device in ("auto", "cuda"):
        resources: dict[str, Any] = {"num_gpus": 1}
        threads = None
    else:
        resources = {"num_cpus": 1}
        threads = opts.actor_threads or 1
    _check_room(cluster, resources, opts, decode_cpus)
    return resources, threads


def split_preprocess(
    preprocess: Callable[[Any], Any],
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
    """(PIL part, tensor part) of a torchvision ``Compose`` that turns the image into a tensor
    with ``ToTensor`` (open_clip's does), so the crop can travel as uint8; None otherwise."""
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    if not isinstance(preprocess, T.Compose) or not steps:
        return None
    cut = next((i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__), None)
    if cut is None:
        return None
    return T.Compose(steps[:cut]), T.Compose(steps[cut:])


@dataclass(frozen=True)
class ResizeCrop:
    """torchvision's ``Resize(short side)``, ``CenterCrop`` and open_clip's ``MaybeConvertMode`` on
    a PIL image, in PIL alone: the same pixels (tests/test_embed.py), but a decode task that
    unpickles it imports neither torch nor open_clip (~9 s of CPU a worker process here)."""

    short: int
    resample: int  # PIL's filter number
    crop: tuple[int, int]  # (height, width), at most ``short`` each: never padded
    mode: str | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.short, int(self.short * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, self.resample)
        ch, cw = self.crop
        top, left = round((size[1] - ch) / 2.0), round((size[0] - cw) / 2.0)  # as torchvision
        image = image.crop((left, top, left + cw, top + ch))
        return image.convert(self.mode) if self.mode else image


def pil_only(pil_part: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``pil_part`` as a :class:`ResizeCrop` when it is open_clip's eval transform (resize the short
    side, centre crop, convert), else ``pil_part`` itself (decode tasks then import torch)."""
    from torchvision import transforms as T
    from torchvision.transforms.functional import pil_modes_mapping

    steps = list(getattr(pil_part, "transforms", ()))
    mode = None
    if steps and type(steps[-1]).__name__ == "MaybeConvertMode":
        mode = getattr(steps.pop(), "mode", None)
        if not isinstance(mode, str):
            return pil_part
    if len(steps) != 2 or not isinstance(steps[0], T.Resize):
        return pil_part
    resize, crop = steps
    size = resize.size
    short = size if isinstance(size, int) else size[0] if len(size) == 1 else None
    if (
        short is None
        or resize.max_size is not None
        or resize.interpolation not in pil_modes_mapping
        or not isinstance(crop, T.CenterCrop)
        or max(crop.size) > short
    ):
        return pil_part
    resample = pil_modes_mapping[resize.interpolation]
    return ResizeCrop(short, resample, (int(crop.size[0]), int(crop.size[1])), mode)


@dataclass(frozen=True)
class DecodePlan:
    """What decode tasks do to an image: ``transform`` (the PIL part of the model's preprocessing,
    or all of it) after decoding at no less than ``draft_size`` (the model's input size)."""

    transform: Callable[[Any], Any]
    draft_size: int


def decode_plan(encoder: Encoder) -> DecodePlan:
    """The plan a loaded model's own preprocessing gives (the actor runs the tensor part)."""
    split = split_preprocess(encoder.preprocess)
    transform = pil_only(split[0]) if split else encoder.preprocess
    return DecodePlan(transform, encoder.image_size)


def planned_decode(opts: EmbedOptions) -> DecodePlan | None:
    """The plan read from the model directory's ``preprocess_cfg`` the way open_clip builds its
    eval transform from it (resize the short side, centre crop, RGB), without importing torch;
    None when the model has no directory or another resize (a task then loads the model)."""
    from models.registry import CONFIG_FILE, model_dir

    directory = model_dir(opts.model, opts.pretrained)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text()) if directory else {}
    except (OSError, ValueError):
        return None  # the model's load says what is wrong with it
    cfg = config.get("preprocess_cfg") if isinstance(config, dict) else None
    if not isinstance(cfg, dict) or (cfg.get("resize_mode") or "shortest") != "shortest":
        return None
    size = cfg.get("size")
    side = size if isinstance(size, int) else None
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        side = size[0]
    if not isinstance(side, int) or side < 1:
        return None
    # open_clip: bilinear when asked, bicubic otherwise; MaybeConvertMode() converts to RGB.
    bilinear = cfg.get("interpolation") == "bilinear"
    resample = Image.Resampling.BILINEAR if bilinear else Image.Resampling.BICUBIC
    return DecodePlan(ResizeCrop(side, int(resample), (side, side), "RGB"), side)


def _yield_to_encoder() -> None:
    """Lower this worker process's priority to the local pipeline's decode workers' (once)."""
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < WORKER_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICE)


@functools.lru_cache(maxsize=1)
def _description(described: Any) -> Description:
    """The :class:`Description` behind an ObjectRef, fetched once per worker process and job
    (a decode worker runs many batches)."""
    import ray

    return ray.get(described)


def _decode_batch(
    batch: dict[str, np.ndarray], plan: DecodePlan | Any, max_pixels: int
) -> dict[str, np.ndarray]:
    """Read, hash, decode and preprocess a batch of paths (a Ray Data task) as ``plan`` says, or
    the :class:`Description` behind it when it is an ObjectRef (the first tasks wait for it).
    ``pixels`` holds uint8 crops (H, W, 3) when that is the PIL part of preprocessing, else float
    tensors."""
    if not isinstance(plan, DecodePlan):
        plan = _description(plan).plan
    _yield_to_encoder()
    paths = [str(p) for p in batch["path"]]
    samples = [
        decode_file(k, p, plan.transform, max_pixels, plan.draft_size) for k, p in enumerate(paths)
    ]
    arrays = [None if x is None else np.asarray(x) for _, x in samples]
    first = next((a for a in arrays if a is not None), None)
    if first is None:
        pixels = np.zeros((len(paths), 1), np.uint8)
    else:
        pixels = np.zeros((len(paths), *first.shape), first.dtype)
        for k, a in enumerate(arrays):
            if a is not None:
                pixels[k] = a
    items = [item for item, _ in samples]
    return {
        "pos": batch["pos"],
        "pixels": pixels,
        "ok": np.array([item.reason is None for item in items]),
        "sha256": np.array([item.sha256 or "" for item in items], dtype=object),
        "width": np.array([item.width or 0 for item in items], np.int32),
        "height": np.array([item.height or 0 for item in items], np.int32),
        "reason": np.array([item.reason or "" for item in items], dtype=object),
        "detail": np.array([item.detail for item in items], dtype=object),
    }


def _recording_warnings(load: Callable[[], Encoder]) -> tuple[Encoder, tuple[str, ...]]:
    """``load()`` and the UserWarnings it gave, for the driver to show (``--pretrained none``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        encoder = load()
    return encoder, tuple(str(w.message) for w in caught if issubclass(w.category, UserWarning))


def plan_mismatch(plan: DecodePlan, own: DecodePlan, opts: EmbedOptions) -> str:
    """Why crops made by ``plan`` are not what the model's own preprocessing (``own``) makes, or
    an empty string."""
    if plan == own:
        return ""
    from models.registry import CONFIG_FILE, model_dir

    return (
        f"{model_dir(opts.model, opts.pretrained)}/{CONFIG_FILE}: its preprocess_cfg says to "
        f"decode as {plan}, but the model preprocesses as {own}; correct preprocess_cfg there "
        "(or export the model again)"
    )


class _EncoderActor:
    """One model per actor, on its GPU when Ray gave it one. ``told`` is what the driver needs
    of the model (its facts, its load's warnings, whether ``plan`` cropped as it would), JSON
    that the first row of each output batch carries."""

    def __init__(self, opts: EmbedOptions, threads: int | None, plan: DecodePlan | None) -> None:
        import torch

        from indexer.embed import ModelFacts
        from models.encoder import Encoder

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() and opts.device != "cpu" else "cpu"
        self.encoder, said = _recording_warnings(
            lambda: Encoder.load(opts.model, opts.pretrained, device, opts.precision)
        )
        self.mismatch = plan_mismatch(plan, decode_plan(self.encoder), opts) if plan else ""
        facts = asdict(ModelFacts.of(self.encoder))
        self.told = json.dumps({"facts": facts, "warnings": said, "mismatch": self.mismatch})

    def tell(self, rows: int) -> np.ndarray:
        return np.array([self.told] + [""] * (rows - 1), dtype=object)


class ImageEncoderActor(_EncoderActor):
    def __init__(self, opts: EmbedOptions, threads: int | None, plan: DecodePlan | None) -> None:
        super().__init__(opts, threads, plan)
        split = split_preprocess(self.encoder.preprocess)
        self.to_tensor = split[1] if split else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = np.asarray(batch["ok"], dtype=bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any() and not self.mismatch:  # wrong crops are not encoded: the driver stops
            pixels = batch["pixels"][ok]
            if pixels.dtype == np.uint8:  # crops: the tensor part of preprocessing runs here
                tensor = torch.stack([self.to_tensor(crop) for crop in pixels])
            else:
                tensor = torch.from_numpy(pixels)
            vectors[ok] = self.encoder.encode_image_tensor(tensor)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["embedding"] = vectors
        out["model"] = self.tell(len(ok))
        return out


class TextEncoderActor(_EncoderActor):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.encoder.encode_texts(texts, batch_size=max(1, len(texts)))
        return {"pos": batch["pos"], "embedding": vectors, "model": self.tell(len(texts))}


def _blocks(rows: list[dict[str, Any]], rows_per_block: int) -> Any:
    """The job's items as a dataset of about ``rows_per_block`` rows a block, made in this process
    (``from_arrow`` runs a task per block for its metadata: a worker process started on the job's
    critical path, 2.4 s on this project's 2-core machine)."""
    import ray

    return ray.data.from_items(rows, override_num_blocks=-(-len(rows) // rows_per_block))


def _check_room(
    cluster: dict[str, float], resources: dict[str, Any], opts: EmbedOptions, decode_cpus: float
) -> None:
    """Refuse a pool the cluster cannot hold beside one decode task: Ray Data would wait for the
    missing resources forever, with no message (a 2-CPU machine and ``--pool-size 2`` did)."""
    if "num_gpus" in resources:
        have, need, unit = cluster.get("GPU", 0), float(opts.pool_size), "GPU"
        what = f"{opts.pool_size} encoder actors of one GPU each"
    else:
        have, unit = cluster.get("CPU", 0), "CPU"
        need = opts.pool_size * resources["num_cpus"] + decode_cpus
        what = f"{opts.pool_size} encoder actors of {resources['num_cpus']} CPU each" + (
            f" and {decode_cpus} CPU for decoding" if decode_cpus else ""
        )
    if need > have:
        has = f"{have:g} {unit}" + "s" * (have != 1)
        raise IndexError_(
            f"--pool-size {opts.pool_size} needs {what}, but the Ray cluster has {has}; use a "
            "smaller --pool-size (each CPU actor runs --actor-threads torch threads) or add nodes"
        )


def _run(
    dataset: Any,
    actor: type,
    opts: EmbedOptions,
    plan: DecodePlan | None = None,
    decode_cpus: float = 0.0,
) -> Iterator[dict[str, np.ndarray]]:
    resources, threads = _actor_resources(opts, decode_cpus)
    import ray

    # The actor's calls run on its main thread, one at a time, not in a thread Ray Data starts for
    # them: there the same batches took 1.27-1.41 s against 1.04-1.09 s (its two torch threads got
    # 1.5 of this 2-core machine's cores, not 1.8; docs/benchmarks.md, issue 11 (a)).
    strategy = ray.data.ActorPoolStrategy(size=opts.pool_size, enable_true_multi_threading=True)
    encoded = dataset.map_batches(
        actor,
        fn_constructor_args=(opts, threads, plan),
        batch_size=opts.batch_size,
        batch_format="numpy",
        compute=strategy,
        **resources,
    )
    yield from encoded.iter_batches(batch_size=None, batch_format="numpy")


@dataclass(frozen=True)
class Description:
    """A job's model as its driver and decode tasks need it, from a task that loads it."""

    facts: ModelFacts
    plan: DecodePlan
    warnings: tuple[str, ...] = ()


def describe(opts: EmbedOptions) -> Description:
    """Load the job's model, as the driver would, and say what the job needs of it (a Ray task):
    how to decode, when the model directory does not say (:func:`planned_decode`), and its own
    error when the actors could not load it."""
    from indexer.embed import ModelFacts, _load

    encoder, said = _recording_warnings(lambda: _load(opts))
    return Description(ModelFacts.of(encoder), decode_plan(encoder), said)


class RayEngine:
    """A job on the connected Ray cluster. The model's facts come with the actors' first results;
    a task that describes it (reserving no CPU, and running before any decode task can) is
    started only when decoding needs it or a failed job needs its error."""

    def __init__(self, opts: EmbedOptions) -> None:
        self.opts = opts
        self._describing: Any = None  # the ObjectRef of :func:`describe`'s Description
        self._facts: ModelFacts | None = None

    def _described(self) -> Any:
        if self._describing is None:
            import ray

            self._describing = ray.remote(num_cpus=0)(describe).remote(self.opts)
        return self._describing

    def facts(self) -> ModelFacts:
        """The model's facts as the actors told them, or from the describing task (waiting for
        it) if no result came: then its load's error, as the driver's own load would raise it."""
        if self._facts is None:
            import ray

            try:
                model: Description = ray.get(self._described())
            except ray.exceptions.RayTaskError as e:
                raise e.cause from None
            for message in model.warnings:
                warnings.warn(message, stacklevel=2)
            self._facts = model.facts
        return self._facts

    def _told(self, batch: dict[str, np.ndarray]) -> None:
        """Take the model's facts from the first batch's first row (:class:`_EncoderActor`),
        show its load's warnings, and refuse crops the model would not have made."""
        if self._facts is not None:
            return
        from indexer.embed import ModelFacts

        said = json.loads(str(batch["model"][0]))
        if said["mismatch"]:
            raise ModelError(said["mismatch"])
        for message in said["warnings"]:
            warnings.warn(message, stacklevel=3)
        self._facts = ModelFacts(**said["facts"])

    def _results(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """``batches`` once the first has told the model's facts, or the model's own error if its
        load is what stopped the job (the actors fail to load it too, with Ray's wrapping)."""
        try:
            first = next(batches)
        except StopIteration:
            return
        except IndexError_:
            raise  # the job's own checks, made before Ray runs anything (a pool that cannot fit)
        except Exception:
            self.facts()
            raise
        self._told(first)
        yield first
        yield from batches

    def image_results(
        self, todo: Sequence[Found], decodable: list[int], max_pixels: int
    ) -> Iterator[Result]:
        """Results for ``todo[p]``, ``p`` in ``decodable``."""
        from indexer.embed import Result

        plan = planned_decode(self.opts)
        data = _blocks(
            [{"pos": p, "path": todo[p].path} for p in decodable],
            self.opts.batch_size * BLOCK_BATCHES,
        )
        decoded = data.map_batches(
            _decode_batch,
            fn_args=(plan or self._described(), max_pixels),
            batch_size=self.opts.batch_size,
            batch_format="numpy",
            num_cpus=DECODE_CPUS,
        )
        encoded = _run(decoded, ImageEncoderActor, self.opts, plan, DECODE_CPUS)
        for batch in self._results(encoded):
            for k, pos in enumerate(batch["pos"]):
                if batch["ok"][k]:
                    yield Result(
                        int(pos),
                        batch["embedding"][k],
                        str(batch["sha256"][k]),
                        int(batch["width"][k]),
                        int(batch["height"][k]),
                    )
                else:
                    yield Result(
                        int(pos), reason=str(batch["reason"][k]), detail=str(batch["detail"][k])
                    )

    def text_results(self, todo: Sequence[str]) -> Iterator[Result]:
        """Results for each text of ``todo``."""
        from indexer.embed import Result

        data = _blocks(
            [{"pos": k, "text": text} for k, text in enumerate(todo)],
            self.opts.batch_size * BLOCK_BATCHES,
        )
        for batch in self._results(_run(data, TextEncoderActor, self.opts)):
            for k, pos in enumerate(batch["pos"]):
                yield Result(int(pos), batch["embedding"][k], sha256_text(todo[int(pos)]))

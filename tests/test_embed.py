"""``clipsearch embed`` (local and Ray engines) and ``index --from-embeddings`` end to end."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_dataset
from typer.testing import CliRunner

import app.cli
from indexer import Index
from indexer import shards as sh
from models import weights
from models.errors import ModelError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = ["--model", "clipsearch-tiny", "--pretrained", "none"]
DIM = 32


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app.cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _read(root: Path, modality: sh.Modality = sh.IMAGES) -> tuple[list[str], np.ndarray, list]:
    """(paths or texts, vectors, skipped rows) over every finished shard, in shard order."""
    key = "path" if modality is sh.IMAGES else "text"
    names, vectors, skipped = [], [], []
    for i in sh.finished(root, modality):
        shard = sh.read_shard(root, modality, i, DIM)
        names += shard.meta.column(key).to_pylist()
        vectors.append(np.asarray(shard.vectors))
        if shard.skipped is not None:
            skipped += shard.skipped.to_pylist()
    return names, np.concatenate(vectors), skipped


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed")
    make_dataset(root / "data", n=10, size=40)
    (root / "data" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "data" / "images" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def tiny_dir(folder: Path) -> Path:
    """The tiny model as a model directory: its ``preprocess_cfg`` plans a Ray job's decoding."""
    from models.encoder import Encoder

    model = Encoder.load("clipsearch-tiny", "none", "cpu").loaded.model
    return weights.export_model_dir(model, "clipsearch-tiny", folder / "tiny-model")


def _with_preprocess(directory: Path, out: Path, **cfg: object) -> Path:
    """A copy of a model directory whose ``preprocess_cfg`` says ``cfg`` instead."""
    shutil.copytree(directory, out)
    config = json.loads((out / weights.CONFIG_FILE).read_text())
    config["preprocess_cfg"].update(cfg)
    (out / weights.CONFIG_FILE).write_text(json.dumps(config))
    return out


@pytest.mark.slow
def test_ray_engine_matches_the_local_one(
    folder: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same shards from both engines, whether decode tasks wait for a task that describes the
    model or start on the model directory's plan (then nothing describes it, nor a text job's);
    the driver loads no model; a model that cannot load, or a plan it refuses, stops the job
    before anything is written, with the model's own error."""
    import indexer.embed as embed
    import indexer.embed_ray as embed_ray

    ray = pytest.importorskip("ray")
    data = folder / "data"
    common = ["--batch-size", "4", "--shard-size", "5", "-q"]
    from_dir = ["--model", "clipsearch-tiny", "--pretrained", tiny_dir, *common]
    wrong = _with_preprocess(tiny_dir, folder / "wrong-model", size=[40, 40])
    for out, model in (("local", TINY), ("local-dir", from_dir[:4])):
        _cli("embed", data, "--out", folder / out, "--workers", "0", *model, *common)
    _cli("embed-text", data / "captions.csv", "--out", folder / "local", *TINY, *common)
    monkeypatch.setattr(embed, "_load", lambda opts: pytest.fail("the driver loaded the model"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = _cli("embed", data, "--out", folder / "ray", "--engine", "ray", *TINY, *common)
        with monkeypatch.context() as m:
            m.setattr(embed_ray.RayEngine, "_described", lambda self: pytest.fail("described"))
            _cli("embed", data, "--out", folder / "ray-dir", "--engine", "ray", *from_dir)
            texts = ["embed-text", data / "captions.csv", "--engine", "ray", *TINY, *common]
            _cli(*texts, "--out", folder / "ray")
        failed = {}
        for name, pretrained in (("missing", folder / "missing.safetensors"), ("wrong", wrong)):
            args = ["embed", data, "--out", folder / name, "--engine", "ray", "-q"]
            args += ["--model", "clipsearch-tiny", "--pretrained", pretrained]
            failed[name] = CliRunner().invoke(app.cli.app, [str(a) for a in args]).exception
    finally:
        ray.shutdown()
    assert isinstance(failed["missing"], ModelError), failed
    assert "weights file not found" in str(failed["missing"])
    assert isinstance(failed["wrong"], ModelError) and "preprocess_cfg says" in str(failed["wrong"])
    assert not (folder / "wrong").exists()
    assert "wrote 3 shards" in out and "skipped 2 (corrupt 1, empty 1)" in out
    for ray_out, local_out in (("ray", "local"), ("ray-dir", "local-dir")):
        local_paths, local_vectors, local_skipped = _read(folder / local_out)
        ray_paths, ray_vectors, ray_skipped = _read(folder / ray_out)
        assert ray_paths == local_paths and len(local_paths) == 10
        np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)
        assert np.allclose(np.linalg.norm(ray_vectors, axis=1), 1, atol=1e-5)
        assert ray_skipped == local_skipped
        assert {r["reason"] for r in ray_skipped} == {"corrupt", "empty"}
    local_texts, local_vectors, _ = _read(folder / "local", sh.TEXTS)
    ray_texts, ray_vectors, _ = _read(folder / "ray", sh.TEXTS)
    assert ray_texts == local_texts and len(local_texts) == 10
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)


def test_decode_plans_from_model_directories_are_the_models_own(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """A model directory's ``preprocess_cfg`` plans a Ray job's decoding before any model loads:
    the same plan as the loaded model's own preprocessing, for every shipped model; none where
    the directory is missing or says another resize; a plan the model would not make is named."""
    from indexer.embed import EmbedOptions
    from indexer.embed_ray import decode_plan, plan_mismatch, planned_decode
    from models import registry
    from models.encoder import Encoder

    shipped = [p.name for p in registry.WEIGHTS_DIR.iterdir() if registry.shipped_weights(p.name)]
    assert "clipsearch-base" in shipped
    jobs = [EmbedOptions(model=name) for name in shipped]
    jobs.append(EmbedOptions(model="clipsearch-tiny", pretrained=str(tiny_dir)))
    for opts in jobs:
        own = decode_plan(Encoder.load(opts.model, opts.pretrained, "cpu"))
        assert planned_decode(opts) == own, opts.model
        assert plan_mismatch(planned_decode(opts), own, opts) == ""
    other = [
        "none",
        str(tiny_dir / weights.WEIGHTS_FILE),
        str(_with_preprocess(tiny_dir, tmp_path / "squash", resize_mode="squash")),
        str(_with_preprocess(tiny_dir, tmp_path / "oblong", size=[32, 48])),
    ]
    for pretrained in other:
        assert planned_decode(EmbedOptions(model="clipsearch-tiny", pretrained=pretrained)) is None
    bilinear = _with_preprocess(tiny_dir, tmp_path / "bilinear", interpolation="bilinear")
    opts = EmbedOptions(model="clipsearch-tiny", pretrained=str(bilinear))
    said = plan_mismatch(planned_decode(opts), own, opts)  # own: the tiny model's (bicubic)
    assert f"{bilinear}/{weights.CONFIG_FILE}: its preprocess_cfg says" in said


@pytest.mark.slow
def test_the_encoder_actors_calls_run_on_its_main_thread() -> None:
    """Called from a thread Ray Data starts for them, the same batches took ~25 % longer (issue 11
    (a)); the model's main-heap malloc settings also hold only for the main thread."""
    ray = pytest.importorskip("ray")
    import threading

    from indexer.embed import EmbedOptions
    from indexer.embed_ray import _run, connected

    class Probe:  # defined here, so Ray ships it to the actor by value
        def __init__(self, opts: EmbedOptions, threads: int | None, plan: object) -> None:
            """Takes what ``_run`` passes every encoder actor."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            main = threading.current_thread() is threading.main_thread()
            return {"pos": batch["pos"], "main": np.full(len(batch["pos"]), main)}

    with connected(None):  # a local instance as the engine starts one
        data = ray.data.from_items([{"pos": k} for k in range(6)])
        batches = list(_run(data, Probe, EmbedOptions(batch_size=2, actor_threads=1)))
    assert not ray.is_initialized()
    assert sorted(int(p) for b in batches for p in b["pos"]) == list(range(6))
    assert all(bool(m) for b in batches for m in b["main"])


def test_ray_crops_travel_as_uint8_and_give_the_same_input(folder: Path) -> None:
    """The decode task ships uint8 crops; the actor's tensor part rebuilds the exact input."""
    from PIL import Image

    from indexer.embed_ray import split_preprocess
    from models.encoder import Encoder

    preprocess = Encoder.load("clipsearch-tiny", "none", "cpu").preprocess
    pil_part, tensor_part = split_preprocess(preprocess)
    image = Image.open(next((folder / "data" / "images").glob("*.png"))).convert("RGB")
    crop = np.asarray(pil_part(image))
    assert crop.dtype == np.uint8 and crop.shape[2] == 3
    assert torch.equal(tensor_part(crop), preprocess(image))
    assert split_preprocess(lambda im: im) is None  # not a Compose: floats travel instead


def test_decode_tasks_crop_in_pil_alone_with_the_same_pixels() -> None:
    """Decode tasks get a torch-free twin of the PIL part: the same crops, for any aspect."""
    from PIL import Image
    from torchvision import transforms as T

    from indexer.embed_ray import ResizeCrop, pil_only, split_preprocess
    from models.encoder import Encoder

    pil_part, _ = split_preprocess(Encoder.load("clipsearch-tiny", "none", "cpu").preprocess)
    twin = pil_only(pil_part)
    assert isinstance(twin, ResizeCrop)
    bicubic = pil_only(T.Compose([T.Resize(30, T.InterpolationMode.BICUBIC), T.CenterCrop(27)]))
    assert isinstance(bicubic, ResizeCrop)
    rng = np.random.default_rng(0)
    for w, h in [(40, 40), (64, 40), (40, 64), (33, 97), (501, 375), (10, 7), (7, 10), (1, 50)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.array_equal(np.asarray(twin(image)), np.asarray(pil_part(image))), (w, h)
        expect = T.CenterCrop(27)(T.Resize(30, T.InterpolationMode.BICUBIC)(image))
        assert np.array_equal(np.asarray(bicubic(image)), np.asarray(expect)), (w, h)
    # Anything else stays torchvision's (decode tasks then import torch).
    for other in (
        T.Compose([T.Resize((30, 40)), T.CenterCrop(20)]),
        T.Compose([T.Resize(30, max_size=50), T.CenterCrop(20)]),
        T.Compose([T.Resize(30), T.CenterCrop(31)]),  # would pad
        T.Compose([T.RandomResizedCrop(30)]),
        T.Compose([T.Resize(30), T.CenterCrop(20), T.Grayscale()]),
    ):
        assert pil_only(other) is other


def test_the_embed_modules_import_no_torch() -> None:
    """Every Ray decode worker process imports ``embed_ray``, and torch and open_clip cost ~9 s of
    CPU there; a Ray job's driver imports them while its cluster starts, not before."""
    import subprocess

    code = (
        "import sys, indexer.embed, indexer.embed_ray; "
        "print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_cpu_encoder_actor_reserves_a_cpu_and_a_gpu_actor_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import indexer.embed_ray as embed_ray
    from indexer.embed import EmbedOptions

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert embed_ray._actor_resources(EmbedOptions(actor_threads=3)) == ({"num_cpus": 1}, 3)
    assert embed_ray._actor_resources(EmbedOptions()) == ({"num_cpus": 1}, 1)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert embed_ray._actor_resources(EmbedOptions()) == ({"num_gpus": 1}, None)
    assert embed_ray._actor_resources(EmbedOptions(device="cpu")) == ({"num_cpus": 1}, 1)


def test_a_pool_the_cluster_cannot_hold_is_refused_not_waited_for() -> None:
    """Two 1-CPU actors and a decode task on 2 CPUs: Ray Data would wait forever."""
    from indexer.embed import EmbedOptions
    from indexer.embed_ray import _check_room
    from indexer.errors import IndexError_

    cpu = {"num_cpus": 1}
    _check_room({"CPU": 2.0}, cpu, EmbedOptions(pool_size=1), 0.5)
    _check_room({"CPU": 2.0}, cpu, EmbedOptions(pool_size=2), 0.0)  # texts decode nothing
    with pytest.raises(
        IndexError_, match=r"--pool-size 2 needs .*cluster has 2 CPUs; use a smaller"
    ):
        _check_room({"CPU": 2.0}, cpu, EmbedOptions(pool_size=2), 0.5)
    _check_room({"CPU": 2.0, "GPU": 2.0}, {"num_gpus": 1}, EmbedOptions(pool_size=2), 0.5)
    with pytest.raises(IndexError_, match="one GPU each, but the Ray cluster has 1 GPU; use"):
        _check_room({"CPU": 8.0, "GPU": 1.0}, {"num_gpus": 1}, EmbedOptions(pool_size=2), 0.5)


def test_an_engine_error_is_raised_as_it_is_not_as_missing_results(tmp_path: Path) -> None:
    """A job that stops on an engine's error (a pool refused, a lost cluster) reports that error,
    not the shards it left unfinished."""
    from indexer.embed import Collector, EmbedReport, Result, _drain
    from indexer.errors import IndexError_

    def results() -> object:
        yield Result(0, np.ones(DIM, np.float32), "x")
        raise IndexError_("the engine stopped")

    collector = Collector(tmp_path, sh.TEXTS, ["a dog", "a cat"], DIM, 0, 10, EmbedReport())
    with pytest.raises(IndexError_, match="the engine stopped"):
        _drain(collector, results(), 0.0)


def test_a_ray_job_checks_its_output_once_the_engine_has_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver asks for the model's facts after the engine's first result (a Ray job's actors
    start loading with it, beside the task that describes the model); the cluster a job started
    stops with it; a job with nothing left to embed starts none."""
    import indexer.embed as embed
    import indexer.embed_ray as embed_ray

    ray = pytest.importorskip("ray")
    events: list[str | None] = []

    class Engine(embed.LocalEngine):  # the model in this process, in the Ray engine's place
        def facts(self) -> embed.ModelFacts:
            events.append("facts")
            return super().facts()

        def text_results(self, todo: Sequence[str]) -> Iterator[embed.Result]:
            events.append("started")
            yield from super().text_results(todo)

    def connect(address: str | None) -> bool:
        events.append(address)
        return True

    monkeypatch.setattr(embed_ray, "RayEngine", Engine)
    monkeypatch.setattr(embed_ray, "_connect", connect)
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("shutdown"))
    opts = embed.EmbedOptions(model="clipsearch-tiny", pretrained="none", engine="ray")
    report = embed.embed_texts(["a dog", "a cat"], tmp_path, opts)
    assert report.embedded == 2 and events == [None, "started", "facts", "shutdown"]
    assert sh.read_manifest(tmp_path)["model"]["model"] == "clipsearch-tiny"
    embed.embed_texts(["a dog"], tmp_path, opts)  # already embedded: no cluster
    assert events == [None, "started", "facts", "shutdown"]


def test_embed_resumes_and_skips_finished_shards(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    args = ["embed", folder / "data", "--out", out, *TINY, "--shard-size", "4", "--workers", "0"]
    first = json.loads(_cli(*args, "--json"))
    assert first["shards"] == [0, 1, 2] and first["indexed"] == 10 and first["skipped"] == 2
    names, vectors, _ = _read(out)
    # A run killed before shard 2's metadata (its commit point) was written:
    sh.IMAGES.meta(out, 2).unlink()
    again = json.loads(_cli(*args, "--json"))
    # Its leftover vectors were dropped and its files embedded again (under the free number).
    assert again["shards"] == [2] and again["unchanged"] == 8 and again["indexed"] == 2
    names2, vectors2, _ = _read(out)
    assert sorted(names2) == sorted(names)
    np.testing.assert_allclose(vectors2[np.argsort(names2)], vectors[np.argsort(names)], atol=1e-6)
    meta = pq.read_table(sh.IMAGES.meta(out, 0)).to_pylist()[0]
    assert set(meta) == {"path", "sha256", "size", "mtime_ns", "width", "height"}
    assert meta["size"] == Path(meta["path"]).stat().st_size and len(meta["sha256"]) == 64
    assert json.loads(_cli(*args, "--json"))["shards"] == []  # nothing left to do


def test_embed_refuses_another_model(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    _cli("embed", folder / "data", "--out", out, *TINY, "--workers", "0", "-q")
    result = CliRunner().invoke(
        app.cli.app,
        ["embed", str(folder / "data"), "--out", str(out), "--model", "clipsearch-flickr8k"],
    )
    assert result.exit_code != 0 and "come from clipsearch-tiny" in str(result.exception)


def test_index_from_embeddings_is_incremental(folder: Path, tmp_path: Path) -> None:
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    captions = folder / "data" / "captions.csv"
    _cli("embed", folder / "data", "--out", emb, *TINY, "--workers", "0", "-q")
    _cli("embed-text", captions, "--out", emb, *TINY, "--shard-size", "4", "-q")
    texts, text_vectors, _ = _read(emb, sh.TEXTS)
    assert len(texts) == 10
    report = json.loads(_cli("index", "--from-embeddings", emb, "--index", idx, "--json"))
    assert (report["indexed"], report["skipped"], report["embedded"]) == (20, 2, 0)
    with Index.open(idx) as index:
        assert index.stats()["images"] == 10 and index.stats()["texts"] == 10
        # A stored vector finds its own image first; the catalog holds the shard's vectors.
        paths, vectors, _ = _read(emb)
        hit = index.search_vector(vectors[3], k=1)[0]
        assert hit.path == paths[3] and hit.score == pytest.approx(1.0, abs=1e-5)
        assert index.search_vector(text_vectors[0], k=1, target="texts")[0].text == texts[0]
    assert (
        json.loads(_cli("index", "--from-embeddings", emb, "--index", idx, "--json"))["unchanged"]
        == 20
    )
    # New images → one new shard → only it is imported.
    make_dataset(folder / "more", n=3, size=40)
    _cli("embed", folder / "more" / "images", "--out", emb, *TINY, "--workers", "0", "-q")
    report = json.loads(_cli("index", "--from-embeddings", emb, "--index", idx, "--json"))
    assert (report["indexed"], report["unchanged"]) == (3, 20)
    with Index.open(idx, lazy=True) as index:
        assert index.stats()["images"] == 13


def test_index_needs_paths_or_embeddings(tmp_path: Path) -> None:
    result = CliRunner().invoke(app.cli.app, ["index", "--index", str(tmp_path / "i")])
    assert result.exit_code != 0 and "--from-embeddings" in str(result.exception)
    result = CliRunner().invoke(
        app.cli.app, ["index", "--from-embeddings", str(tmp_path), "--index", str(tmp_path / "i")]
    )
    assert result.exit_code != 0 and "clipsearch embed" in str(result.exception)

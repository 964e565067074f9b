"""Two real gloo processes on the CPU must train exactly like one process on the global batch.

The parent starts this file as a script twice with torchrun's environment variables; each
worker runs DDP on its half of a fixed global batch and saves its loss and (averaged) gradients
to a file, and the tests compare them with a single-process computation on the whole batch:
plain, with ``local_loss``, and with the half split into accumulated micro-batches. Each worker
also trains a few steps with the ``Trainer`` and resumes, to check that every rank gets its own
RNG state back.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from synthetic import make_dataset
from torch import nn

from models.accumulation import accumulate_gradients
from models.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    gather_features,
    init_distributed,
)
from models.loss import create_loss

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
GLOBAL_BATCH = 8
WORKER_TIMEOUT_S = 150
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
# "<loss kind>-<model>": the towers run in float64, the open_clip model in float32.
CASES = ("clip-towers", "siglip-towers", "clip-openclip-tiny")
# How each rank computes its half: "ddp" (the loss over the gathered batch), "local" (its rows
# only, local_loss), "accum" (two accumulated micro-batches), "accum-local" (both).
MODES = ("ddp", "local", "accum", "accum-local")
MICRO_BATCHES = 2


class TwoTowers(nn.Module):
    """A minimal dual encoder: one linear layer per modality plus the learnable temperature."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        self.image = nn.Linear(10, 6)
        self.text = nn.Linear(7, 6)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0)) if with_bias else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = nn.functional.normalize(self.image(images), dim=-1)
        text = nn.functional.normalize(self.text(texts), dim=-1)
        return image, text


def build_case(case: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """The same model weights and global batch in every process."""
    torch.manual_seed(1234)
    kind = case.split("-", 1)[0]
    if case.endswith("towers"):
        model = TwoTowers(with_bias=kind == "siglip").double()
        images = torch.randn(GLOBAL_BATCH, 10, dtype=torch.float64)
        texts = torch.randn(GLOBAL_BATCH, 7, dtype=torch.float64)
        return model, images, texts, kind
    from models.encoder import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warning for --pretrained none
        loaded = load_model("clipsearch-tiny", "none")
    torch.manual_seed(1234)
    size = loaded.image_size
    images = torch.randn(GLOBAL_BATCH, 3, size, size)
    texts = torch.randint(1, 49407, (GLOBAL_BATCH, 16))
    return loaded.model, images, texts, kind


def loss_and_grads(
    model: nn.Module,
    forward: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    kind: str,
    mode: str = "ddp",
) -> dict[str, Any]:
    """One step's loss and gradients; ``forward`` is the model itself or its DDP wrapper.

    ``forward`` returns (image features, text features); ``mode`` is one of ``MODES``.
    """
    loss_fn = create_loss(kind, local_loss=mode.endswith("local"))

    def batch_loss(
        image_features: torch.Tensor, text_features: torch.Tensor, with_temperature: bool
    ) -> torch.Tensor:
        # The loss takes the raw log-temperature, not the exp() that open_clip's forward returns.
        args = [model.logit_scale] + ([model.logit_bias] if kind == "siglip" else [])
        if not with_temperature:
            args = [a.detach() for a in args]
        return loss_fn(image_features, text_features, *args)

    micro = MICRO_BATCHES if mode.startswith("accum") else 1
    chunks = list(zip(images.chunk(micro), texts.chunk(micro), strict=True))
    loss = accumulate_gradients(forward, chunks, batch_loss, torch.device("cpu"))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": torch.tensor(loss, dtype=torch.float64), "grads": grads}


def two_outputs(model: nn.Module) -> nn.Module:
    """The model as (image features, text features): open_clip's forward adds the scale."""
    if isinstance(model, TwoTowers):
        return model
    from models.train import ContrastiveModel

    return ContrastiveModel(model, text_cached=False)


def counting_all_reduce(counter: list[int]) -> Any:
    """A DDP communication hook that counts its all-reduces (one per bucket and sync)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):  # unannotated: DDP checks annotations against its own types
        counter[0] += 1
        return allreduce_hook(state, bucket)

    return hook


# ----------------------------------------------------------------------------- worker side


def _train_and_resume(info: DistInfo, data: Path, out: Path) -> dict[str, torch.Tensor]:
    """Train one epoch (accumulating, under DDP), then resume from its checkpoint."""
    from models.train import TrainConfig, Trainer

    torch.manual_seed(100 + info.rank)  # each rank its own stream, as train() seeds them
    cfg = TrainConfig(
        data=str(data), out=str(out), model="clipsearch-tiny", pretrained="none", epochs=1,
        batch_size=4, accum_steps=MICRO_BATCHES, warmup_steps=1, workers=0, aug_scale=None,
        precision="fp32", log_every=1000,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warning for --pretrained none
        trainer = Trainer(cfg, info)
    trainer.run()
    saved = torch.get_rng_state()
    torch.manual_seed(12345)
    trainer.resume()
    return {"saved": saved, "restored": torch.get_rng_state()}


def _worker(out_dir: Path, data: Path) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu", timeout=COLLECTIVE_TIMEOUT)
    result: dict[str, Any] = {
        "info": (info.rank, info.world_size, info.local_rank, str(info.device), info.is_main),
        "mean": all_reduce_mean(float(2 * info.rank + 1)),  # ranks send 1 and 3
    }
    barrier()
    per_rank = GLOBAL_BATCH // info.world_size
    rows = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    for case in CASES:
        for mode in MODES:
            model, images, texts, kind = build_case(case)
            ddp = nn.parallel.DistributedDataParallel(two_outputs(model))
            all_reduces = [0]
            ddp.register_comm_hook(None, counting_all_reduce(all_reduces))
            got = loss_and_grads(model, ddp, images[rows], texts[rows], kind, mode)
            result[f"{case}/{mode}"] = got | {"all_reduces": all_reduces[0]}

    result["rng"] = _train_and_resume(info, data, out_dir / "run")

    # Ranks with different batch sizes must all get a clear error, not a hang.
    n = 3 if info.rank == 0 else 4
    try:
        gather_features(torch.zeros(n, 5), torch.zeros(n, 5))
        result["mismatch"] = "no error"
    except ValueError as e:
        result["mismatch"] = str(e)
    barrier()
    torch.save(result, out_dir / f"rank{info.rank}.pt")
    cleanup_distributed()


# ----------------------------------------------------------------------------- parent side


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(out_dir: Path) -> tuple[list[int], list[str]]:
    """Start WORLD_SIZE workers the way torchrun would; kill them all on timeout."""
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "LOCAL_WORLD_SIZE": str(WORLD_SIZE),
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        log_path = out_dir / f"rank{rank}.log"
        logs.append(log_path)
        with open(log_path, "wb") as log_file:  # a file, not a pipe: a full pipe could block
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        str(out_dir),
                        str(out_dir / "shapes" / "captions.csv"),
                    ],
                    env=env,
                    cwd=REPO,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        codes = [-1] * WORLD_SIZE
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, [path.read_text(errors="replace") for path in logs]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    make_dataset(out_dir / "shapes", n=32, size=32)
    for attempt in range(2):
        codes, logs = _launch(out_dir)
        if all(c == 0 for c in codes):
            break
        # The free port can be taken between probing and binding; try once more.
        if attempt == 0 and any("address already in use" in log.lower() for log in logs):
            continue
        tails = "\n".join(
            f"--- rank {r} (exit {c}) ---\n{log[-3000:]}"
            for r, (c, log) in enumerate(zip(codes, logs, strict=True))
        )
        pytest.fail(f"distributed workers failed or timed out after {WORKER_TIMEOUT_S}s:\n{tails}")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_match_one_process_on_the_global_batch(
    worker_results: list[dict[str, Any]], case: str, mode: str
) -> None:
    model, images, texts, kind = build_case(case)
    expected = loss_and_grads(model, two_outputs(model), images, texts, kind)
    assert expected["grads"], "the reference produced no gradients"
    for rank, result in enumerate(worker_results):
        got = result[f"{case}/{mode}"]
        if mode.endswith("local"):  # each rank's loss is its rows' share; their mean is global
            shares = [r[f"{case}/{mode}"]["loss"] for r in worker_results]
            got = got | {"loss": sum(shares) / WORLD_SIZE}
        # Accumulation all-reduces once per step (no_sync before the last micro-batch).
        assert got["all_reduces"] == result[f"{case}/ddp"]["all_reduces"] > 0
        torch.testing.assert_close(got["loss"], expected["loss"], atol=1e-5, rtol=1e-5)
        assert got["grads"].keys() == expected["grads"].keys(), f"rank {rank}"
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(
                got["grads"][name],
                grad,
                atol=1e-5,
                rtol=1e-5,
                msg=lambda m, name=name, rank=rank: f"rank {rank}, gradient of {name}: {m}",
            )
    assert "logit_scale" in expected["grads"]
    if kind == "siglip":
        assert "logit_bias" in expected["grads"]


@pytest.mark.slow
def test_every_rank_resumes_its_own_rng_state(worker_results: list[dict[str, Any]]) -> None:
    states = [result["rng"] for result in worker_results]
    assert not torch.equal(states[0]["saved"], states[1]["saved"])
    for rank, state in enumerate(states):
        assert torch.equal(state["restored"], state["saved"]), f"rank {rank}"


@pytest.mark.slow
def test_rank_info_and_all_reduce_mean(worker_results: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(worker_results):
        assert result["info"] == (rank, WORLD_SIZE, rank, "cpu", rank == 0)
        assert result["mean"] == pytest.approx(2.0)


@pytest.mark.slow
def test_uneven_batches_fail_clearly_on_every_rank(worker_results: list[dict[str, Any]]) -> None:
    for result in worker_results:
        assert "same (batch, dim)" in result["mismatch"]
        assert "rank 0: (3, 5)" in result["mismatch"]
        assert "rank 1: (4, 5)" in result["mismatch"]


def test_single_process_helpers_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.is_main
    assert not torch.distributed.is_initialized()
    assert all_reduce_mean(3.5) == 3.5
    barrier()
    cleanup_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu").world_size == 1
    assert init_distributed("auto").device.type in ("cpu", "cuda")


def test_bad_environment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        init_distributed("cpu")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))

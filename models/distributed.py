"""Small torch.distributed helpers for training under ``torchrun``.

Everything here degrades to a no-op in a plain single process, so the training loop calls the
same functions whether it runs on one CPU or on N GPUs.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: rank 0 of world size 1 when not distributed."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process logs, evaluates and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name} must be an integer, not {value!r}") from e


def _pick_device(device: str, local_rank: int, distributed: bool) -> torch.device:
    """``auto`` means CUDA when present; under torchrun each process takes GPU ``LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA, but CUDA is not available here")
    if dev.index is None:
        dev = torch.device("cuda", local_rank if distributed else 0)
    if dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {dev} does not exist: {torch.cuda.device_count()} CUDA device(s) visible "
            f"(LOCAL_RANK={local_rank}); start torchrun with --nproc-per-node <= the GPU count"
        )
    return dev


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if there is one.

    With ``WORLD_SIZE`` > 1 this initialises torch.distributed (``nccl`` on CUDA, ``gloo`` on
    the CPU) from ``MASTER_ADDR``/``MASTER_PORT``/``RANK``; otherwise nothing is initialised and
    a single-process ``DistInfo`` comes back. ``timeout`` bounds every collective, so a rank that
    dies makes the others fail instead of waiting forever.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo(0, 1, 0, _pick_device(device, 0, distributed=False))

    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dev = _pick_device(device, local_rank, distributed=True)

    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but the environment says {rank} of {world_size}"
            )
        log.debug("process group already initialised; reusing it")
        return DistInfo(rank, world_size, local_rank, dev)

    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict = {}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if dev.type == "cuda":
        # Bind the GPU before any collective so NCCL (and barrier) never guess device 0.
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs
    )
    log.info(
        "distributed: rank %d/%d (local %d) on %s, backend %s",
        rank,
        world_size,
        local_rank,
        dev,
        backend,
    )
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op when none was initialised), so the process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float) -> float:
    """Average a number (e.g. a logged loss) over all ranks; unchanged when not distributed."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (e.g. while rank 0 writes a checkpoint); no-op when not distributed."""
    if is_distributed():
        dist.barrier()


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "features must be 2-D (batch, dim); got image "
            f"{tuple(image_features.shape)} and text {tuple(text_features.shape)}"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            "image and text features must have the same (batch, dim), one caption per image; "
            f"got image {tuple(image_features.shape)} and text {tuple(text_features.shape)}"
        )


def _check_ranks_agree(features: torch.Tensor) -> None:
    """Every rank must send the same (batch, dim), else all_gather fails or hangs.

    All ranks see the same gathered shapes, so they all raise together and none is left waiting.
    """
    world_size = dist.get_world_size()
    shape = torch.tensor(list(features.shape), dtype=torch.long, device=features.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    per_rank = [tuple(int(x) for x in s.tolist()) for s in shapes]
    if len(set(per_rank)) != 1:
        raise ValueError(
            "every rank must contribute features of the same (batch, dim) to the loss; got "
            + ", ".join(f"rank {r}: {s}" for r, s in enumerate(per_rank))
            + " (use drop_last=True in the DataLoader so the last batch is not short)"
        )


def _all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    # Backward of this all_gather sums the gradients from every rank into the local slice,
    # which is what makes a loss over the global batch train exactly like one big process.
    with warnings.catch_warnings():
        # torch 2.x marks torch.distributed.nn as deprecated in favour of a private
        # (_functional_collectives) API; the autograd behaviour here is what we rely on.
        warnings.filterwarnings("ignore", message=".*torch.distributed.nn.functional.all_gather")
        parts = torch.distributed.nn.functional.all_gather(tensor)
    return torch.cat(parts, dim=0)


def gather_features(
    image_features: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the features of all ranks in rank order, keeping gradients to every rank.

    Contrastive losses need every image compared with every caption of the global batch; the
    gather is differentiable so gradients reach the encoders on the rank that made each row.
    Inputs come back unchanged outside a multi-rank process group.
    """
    _check_pair(image_features, text_features)
    if not is_distributed():
        return image_features, text_features
    _check_ranks_agree(image_features)
    return _all_gather_with_grad(image_features), _all_gather_with_grad(text_features)


def local_rows(batch: int) -> slice:
    """Where this rank's ``batch`` rows sit in features gathered by ``gather_features``."""
    rank = dist.get_rank() if is_distributed() else 0
    return slice(rank * batch, (rank + 1) * batch)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed); all ranks must call."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

"""This process's random number generator states (CPU, and the CUDA device it trains on).

Checkpoints keep one entry per rank, because every rank draws its own dropout masks; gradient
accumulation replays a micro-batch's forward with the same draws as its feature-caching pass.
"""

from __future__ import annotations

import torch

RngState = dict[str, torch.Tensor]


def capture(device: torch.device) -> RngState:
    """The CPU generator's state, plus ``device``'s when it is a CUDA device."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: RngState, device: torch.device) -> None:
    """Put back what ``capture`` took (a CUDA state only onto a CUDA device)."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

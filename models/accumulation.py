"""Gradients of a contrastive loss over several micro-batches, equal to those of one big batch.

A contrastive loss couples every row of its batch, so summing per-micro-batch losses would leave
each row only its own micro-batch's negatives. Instead, as open_clip's ``accum_freq`` does:

1. every micro-batch's features are computed without gradients; the RNG state before each is
   kept and the module buffers (BatchNorm statistics) are put back afterwards, so the second
   pass draws the same dropout masks and the statistics advance once per micro-batch;
2. each micro-batch is forwarded again with gradients, its rows spliced into the cached
   features, and the loss over the whole batch is backpropagated into those rows only. The
   temperature (and bias), which are not features, take their gradient on the last pass only.

Under DDP all but the last micro-batch run in ``no_sync``, so gradients are all-reduced once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models import rng

# (image features, text features of the whole batch, whether the temperature takes gradients)
LossFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def accumulate_gradients(
    net: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    device: torch.device,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Add the whole batch's loss gradients to ``.grad``; returns that loss.

    ``net(images, texts)`` returns (image features, text features), plain or DDP-wrapped;
    ``batches`` are its inputs, already on the device.
    """
    module = net.module if isinstance(net, DistributedDataParallel) else net
    cached_images: list[torch.Tensor] = []
    cached_texts: list[torch.Tensor] = []
    states: list[rng.RngState] = []
    if len(batches) > 1:
        buffers = [b.detach().clone() for b in module.buffers()]
        with torch.no_grad():
            for images, texts in batches:
                states.append(rng.capture(device))
                with autocast():
                    image_f, text_f = module(images, texts)
                cached_images.append(image_f)
                cached_texts.append(text_f)
            for buffer, saved in zip(module.buffers(), buffers, strict=True):
                buffer.copy_(saved)

    loss = torch.zeros(())
    for j, (images, texts) in enumerate(batches):
        last = j == len(batches) - 1
        if states:
            rng.restore(states[j], device)
        ddp = isinstance(net, DistributedDataParallel)
        with net.no_sync() if ddp and not last else contextlib.nullcontext():
            with autocast():
                image_f, text_f = net(images, texts)
                loss = loss_fn(
                    torch.cat([*cached_images[:j], image_f, *cached_images[j + 1 :]]),
                    torch.cat([*cached_texts[:j], text_f, *cached_texts[j + 1 :]]),
                    last,
                )
            backward(loss)
    return float(loss.detach())

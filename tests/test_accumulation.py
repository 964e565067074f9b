"""Accumulated micro-batches give the gradients of one contrastive batch, in one process.

The reference runs the same towers over the micro-batches one after another, concatenates their
features with gradients and backpropagates the loss once: one batch whose forward is chunked.
Dropout and BatchNorm make the replayed forward and the buffers observable.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.accumulation import accumulate_gradients
from models.loss import LOSSES, create_loss

CPU = torch.device("cpu")
BATCH, MICRO = 12, 3


class NoisyTowers(nn.Module):
    """Image tower with BatchNorm and dropout, text tower with dropout, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.Dropout(0.3))
        self.text = nn.Sequential(nn.Linear(7, 8), nn.Dropout(0.3))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = nn.functional.normalize(self.image(images), dim=-1)
        return image, nn.functional.normalize(self.text(texts), dim=-1)


def _setup(kind: str) -> tuple[NoisyTowers, torch.Tensor, torch.Tensor, nn.Module]:
    torch.manual_seed(7)
    model = NoisyTowers().double().train()
    images = torch.randn(BATCH, 10, dtype=torch.float64)
    texts = torch.randn(BATCH, 7, dtype=torch.float64)
    return model, images, texts, create_loss(kind)


def _loss(model: NoisyTowers, loss: nn.Module, kind: str):
    def batch_loss(image_f: torch.Tensor, text_f: torch.Tensor, with_temperature: bool):
        params = [model.logit_scale] + ([model.logit_bias] if kind == "siglip" else [])
        if not with_temperature:
            params = [p.detach() for p in params]
        return loss(image_f, text_f, *params)

    return batch_loss


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {f"grad:{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads | {f"buffer:{n}": b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("micro_batches", [1, MICRO])
def test_accumulation_equals_one_chunked_batch(kind: str, micro_batches: int) -> None:
    model, images, texts, loss = _setup(kind)
    chunks = list(zip(images.chunk(micro_batches), texts.chunk(micro_batches), strict=True))

    torch.manual_seed(99)
    features = [model(i, t) for i, t in chunks]
    expected_loss = _loss(model, loss, kind)(
        torch.cat([f[0] for f in features]), torch.cat([f[1] for f in features]), True
    )
    expected_loss.backward()
    expected = _state(model)

    model, images, texts, loss = _setup(kind)
    torch.manual_seed(99)
    got_loss = accumulate_gradients(model, chunks, _loss(model, loss, kind), CPU)
    got = _state(model)

    assert got_loss == pytest.approx(expected_loss.item(), abs=1e-12)
    assert got.keys() == expected.keys()
    assert "grad:logit_scale" in got and "buffer:image.1.running_mean" in got
    for name, value in expected.items():
        # Replayed dropout masks, buffers advanced once, the temperature's gradient taken once.
        torch.testing.assert_close(got[name], value, atol=1e-12, rtol=1e-10, msg=name)


def test_accumulation_sees_the_whole_batch_as_negatives() -> None:
    # Deterministic towers: accumulating 3 micro-batches = one forward over all 12 rows.
    model, images, texts, loss = _setup("clip")
    model.eval()
    _loss(model, loss, "clip")(*model(images, texts), True).backward()
    expected = _state(model)
    model.zero_grad()
    chunks = list(zip(images.chunk(MICRO), texts.chunk(MICRO), strict=True))
    accumulate_gradients(model, chunks, _loss(model, loss, "clip"), CPU)
    for name, value in _state(model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-12, rtol=1e-10, msg=name)

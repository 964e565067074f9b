"""The contrastive losses against values computed by hand, single process."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.distributed import gather_features
from models.loss import (
    LOSSES,
    ClipLoss,
    SigLipLoss,
    clamp_logit_scale,
    create_loss,
    keyword_clip_loss,
)

# Three unit vectors in 2-D for the images and three for the captions, written out.
IMAGES = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
TEXTS = [[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _logits(scale: float, bias: float = 0.0) -> list[list[float]]:
    return [[scale * _dot(i, t) + bias for t in TEXTS] for i in IMAGES]


def _cross_entropy(rows: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[i] for the matching column i."""
    total = 0.0
    for i, row in enumerate(rows):
        total += math.log(sum(math.exp(x) for x in row)) - row[i]
    return total / len(rows)


def _tensors(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(IMAGES, dtype=dtype), torch.tensor(TEXTS, dtype=dtype)


def test_clip_loss_identity_closed_form() -> None:
    # Identical one-hot pairs, scale e^0 = 1: each row is (1, 0), loss = log(1 + e^-1).
    eye = torch.eye(2, dtype=torch.float64)
    loss = ClipLoss()(eye, eye, torch.tensor(0.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)
    assert loss.item() == pytest.approx(0.3132616875, abs=1e-9)


def test_clip_loss_matches_hand_computation() -> None:
    scale = 5.0
    logits = _logits(scale)
    by_columns = [list(col) for col in zip(*logits, strict=True)]
    expected = (_cross_entropy(logits) + _cross_entropy(by_columns)) / 2
    images, texts = _tensors()
    loss = ClipLoss()(images, texts, torch.tensor(math.log(scale), dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_keyword_loss_without_keywords_is_the_clip_loss() -> None:
    images, texts = _tensors()
    scale = torch.tensor(math.log(5.0), dtype=torch.float64)
    none = torch.zeros((3, 0), dtype=torch.bool)
    expected = ClipLoss()(images, texts, scale)
    loss = keyword_clip_loss(images, texts, texts[:0], scale, none)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


def test_keyword_loss_matches_hand_computation() -> None:
    # Images 0-2 with captions 0-2, plus two keywords: the first used by images 1 and 2's
    # captions (target: half each), the second by image 0's only.
    scale = 5.0
    keywords = [[0.0, 1.0], [1.0, 0.0]]
    positives = [[False, True], [True, False], [True, False]]
    logits = _logits(scale)
    by_columns = [list(col) for col in zip(*logits, strict=True)]
    clip = (_cross_entropy(logits) + _cross_entropy(by_columns)) / 2

    def soft_ce(row: list[float], targets: list[bool]) -> float:
        lse = math.log(sum(math.exp(x) for x in row))
        chosen = [x for x, t in zip(row, targets, strict=True) if t]
        return sum(lse - x for x in chosen) / len(chosen)

    word_rows = [[scale * _dot(w, i) for i in IMAGES] for w in keywords]
    columns = [list(c) for c in zip(*positives, strict=True)]
    expected = clip + sum(soft_ce(r, t) for r, t in zip(word_rows, columns, strict=True)) / 2
    images, texts = _tensors()
    loss = keyword_clip_loss(
        images,
        texts,
        torch.tensor(keywords, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
        torch.tensor(positives),
    )
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_keyword_loss_refuses_a_keyword_no_image_uses() -> None:
    images, texts = _tensors()
    with pytest.raises(ValueError, match="at least one image"):
        keyword_clip_loss(
            images, texts, texts[:1], torch.tensor(0.0), torch.zeros((3, 1), dtype=torch.bool)
        )


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_siglip_loss_identity_closed_form() -> None:
    # Diagonal logits 1 (label +1), off-diagonal 0 (label -1), over 2 images:
    # -(2*logsig(1) + 2*logsig(0)) / 2 = log(1 + e^-1) + log(2).
    eye = torch.eye(2, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    loss = SigLipLoss()(eye, eye, zero, zero)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) + math.log(2), abs=1e-12)


def test_siglip_loss_matches_hand_computation() -> None:
    scale, bias = 10.0, -3.0
    logits = _logits(scale, bias)
    total = 0.0
    for i, row in enumerate(logits):
        for j, x in enumerate(row):
            label = 1.0 if i == j else -1.0
            total += _log_sigmoid(label * x)
    expected = -total / len(IMAGES)
    images, texts = _tensors()
    loss = SigLipLoss()(
        images,
        texts,
        torch.tensor(math.log(scale), dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64),
    )
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def _pairs(n: int = 16, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    texts = nn.functional.normalize(images + 0.1 * torch.randn(n, dim, generator=g), dim=-1)
    return images, texts


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_matched_pairs_beat_shuffled_pairs(kind: str) -> None:
    images, texts = _pairs()
    shuffled = texts.roll(1, dims=0)  # no caption stays with its image
    args = [torch.tensor(math.log(10.0))]
    if kind == "siglip":
        args.append(torch.tensor(-10.0))
    loss = create_loss(kind)
    assert loss(images, texts, *args).item() < loss(images, shuffled, *args).item()


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_gradients_reach_temperature_and_bias(kind: str) -> None:
    images, texts = _pairs()
    images.requires_grad_(True)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    args = [logit_scale]
    if kind == "siglip":
        logit_bias = nn.Parameter(torch.tensor(-10.0))
        args.append(logit_bias)
    create_loss(kind)(images, texts, *args).backward()
    for p in [images, *args]:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_create_loss_builds_each_kind() -> None:
    assert isinstance(create_loss("clip"), ClipLoss)
    assert isinstance(create_loss("siglip"), SigLipLoss)


def test_create_loss_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown loss 'triplet'") as err:
        create_loss("triplet")
    assert "clip" in str(err.value)
    assert "siglip" in str(err.value)


class _WithScale(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(value))


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel, which keeps the model as ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize(
    ("value", "expected"),
    [(10.0, math.log(100)), (-1.0, 0.0), (2.5, 2.5), (math.log(100), math.log(100))],
)
def test_clamp_logit_scale(value: float, expected: float) -> None:
    model = _WithScale(value)
    param = model.logit_scale
    clamp_logit_scale(model)
    assert model.logit_scale is param  # in place: the optimizer still holds this tensor
    assert model.logit_scale.item() == pytest.approx(expected, abs=1e-6)
    assert model.logit_scale.requires_grad


def test_clamp_logit_scale_custom_max_and_wrapped_model() -> None:
    inner = _WithScale(3.0)
    clamp_logit_scale(_Wrapper(inner), max_scale=1.0)
    assert inner.logit_scale.item() == pytest.approx(1.0)


def test_clamp_logit_scale_needs_a_scale() -> None:
    with pytest.raises(ValueError, match="no logit_scale"):
        clamp_logit_scale(nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("image_shape", "text_shape"),
    [((4,), (4,)), ((2, 3, 4), (2, 3, 4)), ((4, 8), (3, 8)), ((4, 8), (4, 6))],
)
def test_bad_feature_shapes_are_refused(
    image_shape: tuple[int, ...], text_shape: tuple[int, ...]
) -> None:
    images, texts = torch.zeros(image_shape), torch.zeros(text_shape)
    with pytest.raises(ValueError, match="features"):
        gather_features(images, texts)
    with pytest.raises(ValueError, match="features"):
        ClipLoss()(images, texts, torch.tensor(0.0))


def test_gather_features_is_identity_in_one_process() -> None:
    images, texts = _pairs(4, 3)
    out_images, out_texts = gather_features(images, texts)
    assert out_images is images
    assert out_texts is texts


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_agrees_with_open_clip_reference(kind: str) -> None:
    # open_clip's losses take the already exponentiated scale; ours take the log.
    from open_clip import loss as oc_loss

    images, texts = _pairs(12, 6)
    log_scale, bias = torch.tensor(2.3), torch.tensor(-4.0)
    if kind == "clip":
        ours = ClipLoss()(images, texts, log_scale)
        ref = oc_loss.ClipLoss()(images, texts, log_scale.exp())
    else:
        ours = SigLipLoss()(images, texts, log_scale, bias)
        ref = oc_loss.SigLipLoss()(images, texts, log_scale.exp(), bias)
    torch.testing.assert_close(ours, ref)

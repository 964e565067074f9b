"""The index's torch-free text query encoder, ``DIR/query-text.tower`` (see ``models.lite_text``).

Written beside the FAISS checkpoints by a writer that has the encoder loaded, for models whose
text tower can be exported; a reader that finds it embeds text queries without importing torch or
open_clip (a cold ``clipsearch search`` then takes well under a second instead of several). Like
a checkpoint it is a derived artifact: a copy of another model's tower is ignored, a missing one
costs only speed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import ModelError
from models.lite_text import LiteTextEncoder, export, read_meta

if TYPE_CHECKING:
    from models.encoder import Encoder

log = logging.getLogger(__name__)
QUERY_TEXT = "query-text.tower"
IDENTITY_KEYS = ("model", "weights_sha256", "dim")


def _identity(model: dict[str, Any]) -> dict[str, Any]:
    return {k: model[k] for k in IDENTITY_KEYS}


def load(directory: Path, model: dict[str, Any]) -> LiteTextEncoder | None:
    """The exported tower for the manifest's ``model``, or None (absent, unreadable, stale)."""
    path = directory / QUERY_TEXT
    if not path.is_file():
        return None
    try:
        lite = LiteTextEncoder.load(path)
    except ModelError as e:
        log.warning("%s; text queries load the full encoder", e)
        return None
    return lite if lite.identity == _identity(model) else None


def ensure(directory: Path, encoder: Encoder, model: dict[str, Any]) -> None:
    """Export ``encoder``'s text tower unless a current copy exists (the caller holds the lock)."""
    path = directory / QUERY_TEXT
    try:
        if path.is_file() and read_meta(path)["identity"] == _identity(model):
            return
    except ModelError:
        pass  # unreadable: written again below
    try:
        if not export(encoder, path, _identity(model)):
            path.unlink(missing_ok=True)  # a stale copy of another model
    except OSError as e:  # only speed is lost; the index itself is written
        log.warning("could not write %s: %s", path, e)

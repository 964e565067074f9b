"""The dual encoder: open_clip architectures, contrastive losses, training and evaluation.

``import models`` is cheap: the errors load at once, the encoder (torch, open_clip: seconds) on
first use of ``models.Encoder``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.errors import CheckpointError, ClipsearchError, DataError, ModelError
from models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from models.encoder import Encoder, Provenance

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "ClipsearchError",
    "DataError",
    "Encoder",
    "ModelError",
    "Provenance",
]


def __getattr__(name: str) -> Any:
    if name in ("Encoder", "Provenance"):
        from models import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

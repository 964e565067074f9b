"""The dual encoder: open_clip architectures, contrastive losses, training and evaluation."""

from models.encoder import Encoder, Provenance
from models.errors import CheckpointError, ClipsearchError, DataError, ModelError
from models.registry import DEFAULT_MODEL

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "ClipsearchError",
    "DataError",
    "Encoder",
    "ModelError",
    "Provenance",
]

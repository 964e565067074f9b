"""Domain errors raised by the library; the CLI and the service translate them at the edge.

Every message says what happened and what to do about it.
"""


class ClipsearchError(Exception):
    """Base of every error clipsearch raises on purpose."""


class ModelError(ClipsearchError):
    """An architecture or its weights could not be resolved or loaded."""


class DataError(ClipsearchError):
    """A training or evaluation data file is malformed; the message names the file and row."""


class CheckpointError(ClipsearchError):
    """A training checkpoint is missing, corrupt or does not match the run."""

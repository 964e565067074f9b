"""Where an index lives when no ``--index`` is given: ``$CLIPSEARCH_INDEX``, else one per user.

Every command (``index``, ``search``, ``info``, ``serve``, ``export``) resolves it the same way, so
``clipsearch index ~/Pictures`` then ``clipsearch search "a dog"`` just works, like rclip.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CLIPSEARCH_INDEX"


def user_index_dir() -> Path:
    """The per-user default: ``$XDG_DATA_HOME/clipsearch/index`` (``~/.local/share/...``)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "clipsearch" / "index"


def default_index_dir() -> Path:
    """``$CLIPSEARCH_INDEX`` if set, else :func:`user_index_dir`."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else user_index_dir()

"""The ``clipsearch`` command: one Typer app assembled from each package's commands.

Library errors are translated here, at the edge, into a one-line message and exit status 2.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer

from app.serve import serve as serve_command
from indexer.cli import app as indexer_app
from models.cli import app as models_app
from models.errors import ClipsearchError

app = typer.Typer(
    name="clipsearch",
    help="Semantic search over image collections with a CLIP-style dual encoder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_command)
for _group in (models_app, indexer_app):
    for _command in _group.registered_commands:
        app.registered_commands.append(_command)
    for _sub in _group.registered_groups:
        app.registered_groups.append(_sub)


def _quiet_libraries() -> None:
    """Keep third-party chatter (transformers' load reports, open_clip info) off the terminal."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)
    logging.captureWarnings(True)  # our own warnings (random weights, ...) as one log line
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")  # load chatter
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    for name in ("models", "indexer", "app"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except ClipsearchError as e:
        # One line: some messages end with a library's own multi-line explanation (torch.load).
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        typer.secho(f"error: {first}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""The ``clipsearch`` command: each package's Typer app, composed with ``add_typer``.

Library errors are translated here, at the edge, into a one-line message and exit status 2.
Nothing heavy is imported at start-up: ``clipsearch --help`` must be instant, and each command
imports torch, open_clip or FAISS only when it needs them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from app.search_cli import search_command
from app.serve import serve as serve_command
from indexer.cli import app as indexer_app
from indexer.cli_embed import app as embed_app
from models.cli import app as models_app
from models.errors import ClipsearchError

app = typer.Typer(
    name="clipsearch",
    help="Semantic search over image collections with a CLIP-style dual encoder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(indexer_app)
app.command("search")(search_command)
app.command("serve")(serve_command)
app.add_typer(models_app)
app.add_typer(embed_app)


def _quiet_libraries() -> None:
    """Keep third-party chatter (transformers' load reports, open_clip info) off the terminal."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)
    logging.captureWarnings(True)  # our own warnings (random weights, ...) as one log line
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")  # load chatter
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    for name in ("models", "indexer", "app"):
        logging.getLogger(name).setLevel(logging.INFO)
    # Read by transformers and huggingface_hub when (and if) a command imports them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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

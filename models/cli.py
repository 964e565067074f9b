"""``clipsearch train``, ``clipsearch eval ...`` and ``clipsearch models``: thin calls into the library."""

from __future__ import annotations

import typer

from models import registry

app = typer.Typer(no_args_is_help=True)
eval_app = typer.Typer(no_args_is_help=True, help="Measure a model: retrieval recall, zero-shot accuracy.")
app.add_typer(eval_app, name="eval")


@app.command("models")
def list_models() -> None:
    """List every architecture name --model accepts (the project's own first)."""
    for name in registry.list_architectures():
        shipped = " (weights shipped)" if registry.shipped_weights(name) else ""
        typer.echo(f"{name}{shipped}")

"""``clipsearch embed`` and ``embed-text``: embedding shards for bulk jobs (``indexer.embed``)."""

from __future__ import annotations

from pathlib import Path

import typer

from indexer.cli import DEVICE_OPT, MODEL_OPT, PRETRAINED_OPT, _print_report
from indexer.layout import DEFAULT_SHARD_SIZE, ENGINES
from indexer.texts import read_corpus

app = typer.Typer(no_args_is_help=True)

OUT_OPT = typer.Option(..., "--out", "-o", help="Embeddings directory (created if missing).")
ENGINE_OPT = typer.Option(
    "local", "--engine", help=f"{'|'.join(ENGINES)}: this process, or a Ray cluster."
)
ADDRESS_OPT = typer.Option(
    None, "--address", help="Ray cluster to join (e.g. ray://head:10001, auto); default: local."
)
BATCH_OPT = typer.Option(32, "--batch-size", min=1, help="Items per encoder batch.")
SHARD_OPT = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", min=1, help="Items per shard.")
POOL_OPT = typer.Option(
    1, "--pool-size", min=1, help="Ray: encoder actors (one GPU each when the cluster has GPUs)."
)
THREADS_OPT = typer.Option(
    None, "--actor-threads", min=1, help="Ray: torch threads of each CPU encoder actor (1)."
)
PRECISION_OPT = typer.Option(
    "auto", "--precision", help="auto (bf16 with AMX or a GPU, else fp32), fp32 or bf16."
)


@app.command("embed")
def embed_command(
    paths: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    out: Path = OUT_OPT,
    engine: str = ENGINE_OPT,
    address: str | None = ADDRESS_OPT,
    model: str | None = MODEL_OPT,
    pretrained: str | None = PRETRAINED_OPT,
    batch_size: int = BATCH_OPT,
    shard_size: int = SHARD_OPT,
    pool_size: int = POOL_OPT,
    actor_threads: int | None = THREADS_OPT,
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Local: decode processes (0: a thread)."
    ),
    exclude: list[str] | None = typer.Option(None, "--exclude", help="Glob to leave out."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Skip larger images."),
    device: str = DEVICE_OPT,
    precision: str = PRECISION_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every skipped file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed images into shards (img_emb/, metadata/) for 'index --from-embeddings'; resumable."""
    from indexer.embed import EmbedOptions, embed_images

    opts = EmbedOptions(
        model=model, pretrained=pretrained, device=device, precision=precision, engine=engine,
        address=address, batch_size=batch_size, shard_size=shard_size, pool_size=pool_size,
        actor_threads=actor_threads, workers=workers, max_pixels=max_pixels,
        exclude=tuple(exclude or ()), progress=not quiet and not as_json,
    )  # fmt: skip
    _print_report(embed_images(paths, out, opts), as_json, verbose)


@app.command("embed-text")
def embed_text_command(
    file: Path = typer.Argument(..., help="Captions, labels or tags: CSV/TSV, or one per line."),
    out: Path = OUT_OPT,
    column: str | None = typer.Option(None, "--column", help="CSV column to read."),
    engine: str = ENGINE_OPT,
    address: str | None = ADDRESS_OPT,
    model: str | None = MODEL_OPT,
    pretrained: str | None = PRETRAINED_OPT,
    batch_size: int = BATCH_OPT,
    shard_size: int = SHARD_OPT,
    pool_size: int = POOL_OPT,
    actor_threads: int | None = THREADS_OPT,
    device: str = DEVICE_OPT,
    precision: str = PRECISION_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed a text corpus into shards (text_emb/, text_metadata/); resumable."""
    from indexer.embed import EmbedOptions, embed_texts

    opts = EmbedOptions(
        model=model, pretrained=pretrained, device=device, precision=precision, engine=engine,
        address=address, batch_size=batch_size, shard_size=shard_size, pool_size=pool_size,
        actor_threads=actor_threads, progress=not quiet and not as_json,
    )  # fmt: skip
    _print_report(embed_texts(read_corpus(file, column), out, opts), as_json, False)

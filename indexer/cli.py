"""``clipsearch index``, ``index-text`` and ``info``: thin calls into ``Index`` (imported by each
command, so ``--help`` stays instant)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from indexer.errors import IndexError_, QueryError, ScanError
from indexer.layout import DEFAULT_ONDISK_THRESHOLD, INDEX_TYPES
from indexer.location import ENV_VAR, default_index_dir
from indexer.results import IndexReport
from indexer.texts import read_corpus

app = typer.Typer(no_args_is_help=True)

IndexDir = Annotated[
    Path,
    typer.Option(
        "--index",
        "-i",
        default_factory=default_index_dir,
        envvar=ENV_VAR,
        help="Index directory (`index` creates it if missing).",
        show_default="~/.local/share/clipsearch/index",
    ),
]
MODEL_OPT = typer.Option(
    None, "--model", help="Architecture; a new index defaults to the project's model."
)
PRETRAINED_OPT = typer.Option(
    None, "--pretrained", help="Weights: a file, a model directory, a hub tag, or 'none'."
)
DEVICE_OPT = typer.Option("auto", "--device", help="auto, cpu or cuda.")
PRECISION_OPT = typer.Option(
    None,
    "--precision",
    help="auto (default: bf16 with AMX or a GPU, else fp32; measured in docs/benchmarks.md), "
    "fp32 or bf16.",
)


def _print_report(report: IndexReport, as_json: bool, verbose: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    limit = None if verbose else 20
    for s in report.skipped_files[:limit]:
        typer.echo(f"skipped {s.path}: {s.reason} ({s.detail})", err=True)
    if limit is not None and len(report.skipped_files) > limit:
        typer.echo(
            f"... and {len(report.skipped_files) - limit} more (--verbose lists all)", err=True
        )
    typer.echo(report.summary())


@app.command("index")
def index_command(
    index: IndexDir,
    paths: list[Path] | None = typer.Argument(
        None, help="Image files or folders (walked recursively)."
    ),
    from_embeddings: Path | None = typer.Option(
        None,
        "--from-embeddings",
        help="Import the shards 'clipsearch embed' wrote to this directory instead of encoding "
        "(new shards only on a rerun).",
    ),
    ondisk_threshold: int = typer.Option(
        DEFAULT_ONDISK_THRESHOLD,
        "--ondisk-threshold",
        min=1,
        help="With --from-embeddings: from this many images, IVF-PQ with on-disk lists.",
    ),
    model: str | None = MODEL_OPT,
    pretrained: str | None = PRETRAINED_OPT,
    batch_size: int = typer.Option(32, "--batch-size", help="Images per encoder batch."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Decode processes; 0 decodes in a thread of this process. Default: the cores the "
        "encoder leaves free (at most 4), else 0.",
    ),
    index_type: str | None = typer.Option(
        None,
        "--index-type",
        help=f"{'|'.join(INDEX_TYPES)}; default: what the index has, 'auto' for a new one.",
    ),
    exclude: list[str] | None = typer.Option(
        None, "--exclude", help="Glob of paths to leave out (repeatable), e.g. '*/thumbs/*'."
    ),
    max_memory: str | None = typer.Option(
        None,
        "--max-memory",
        help="Memory budget for the FAISS indexes, e.g. 2G (IVF-PQ if needed).",
    ),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Skip images with more pixels (decompression bombs)."
    ),
    device: str = DEVICE_OPT,
    precision: str | None = PRECISION_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every skipped file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Index images incrementally: new and changed files are embedded, deleted ones dropped."""
    from indexer.index import Index

    if (from_embeddings is None) == (not paths):
        raise QueryError("give image folders to index, or --from-embeddings DIR (not both)")
    if batch_size < 1:
        raise IndexError_(f"--batch-size must be at least 1, not {batch_size}")
    if from_embeddings is not None:
        from indexer.from_shards import index_from_embeddings

        report = index_from_embeddings(from_embeddings, index, ondisk_threshold=ondisk_threshold)
        _print_report(report, as_json, verbose)
        return
    for path in paths:  # before the index directory is made
        if not path.exists():
            raise ScanError(f"cannot index {path}: no such file or folder")
    idx = Index.open_or_create(
        index,
        model=model,
        pretrained=pretrained,
        index_type=index_type,
        max_memory=max_memory,
        max_pixels=max_pixels,
        batch_size=batch_size,
        workers=workers,
        exclude=exclude or (),
        device=device,
        precision=precision,
    )
    try:
        report = idx.add_images(paths, progress=not quiet and not as_json)
    finally:
        idx.close()
    _print_report(report, as_json, verbose)
    if not (report.indexed or report.unchanged or report.renamed or report.skipped_files):
        typer.echo(f"warning: no image files found under {', '.join(map(str, paths))}", err=True)


@app.command("index-text")
def index_text_command(
    index: IndexDir,
    file: Path = typer.Argument(..., help="Captions, labels or tags: CSV/TSV, or one per line."),
    column: str | None = typer.Option(
        None, "--column", help="CSV column to read (default: caption/text/label/tag...)."
    ),
    model: str | None = MODEL_OPT,
    pretrained: str | None = PRETRAINED_OPT,
    device: str = DEVICE_OPT,
    precision: str | None = PRECISION_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Add a text corpus in the same space, for image→text search (--target texts)."""
    from indexer.index import Index

    texts = read_corpus(file, column)
    idx = Index.open_or_create(
        index,
        model=model,
        pretrained=pretrained,
        index_type=None,
        device=device,
        precision=precision,
    )
    try:
        report = idx.add_texts(texts, progress=not quiet and not as_json)
    finally:
        idx.close()
    _print_report(report, as_json, False)


@app.command("info")
def info_command(
    index: IndexDir,
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Counts, model, index types, recall@10, sizes and format version of an index."""
    from indexer.index import Index

    idx = Index.open(index, lazy=True)
    try:
        stats = idx.stats()
    finally:
        idx.close()
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    mib = 1 << 20
    lines = [
        f"index      {stats['directory']} (format {stats['format_version']}, "
        f"schema {stats['schema_version']}, generation {stats['generation']})",
        f"model      {stats['model']} (weights {stats['pretrained']}, dim {stats['dim']}, "
        f"{stats['precision']})",
        "ranking    "
        + (
            "cosine; sentence queries to images corrected against hub images (query bank of "
            f"{h['bank']} captions, k {h['k']}, weight {h['weight']})"
            if (h := stats["hubness"])
            else "cosine (the model directory has no query bank)"
        ),
        f"images     {stats['images']}",
        f"texts      {stats['texts']}",
        f"skipped    {stats['skipped']}"
        + (
            " (" + ", ".join(f"{r} {n}" for r, n in stats["skipped_by_reason"].items()) + ")"
            if stats["skipped"]
            else ""
        ),
    ]
    for target, d in stats["indexes"].items():
        recall = d.get("recall@10")
        extra = []
        if recall is not None:
            extra.append("exact" if d.get("exact") else f"recall@10 {recall:.3f}")
        for key in ("nprobe", "efSearch"):
            if key in d:
                extra.append(f"{key} {d[key]}")
        if target in stats["damaged"]:
            extra.append(
                "checkpoint DAMAGED: searches rebuild it in memory, the next write saves it"
            )
        elif not d.get("up_to_date"):
            extra.append("stale: brought current in memory on open, saved by the next write")
        lines.append(
            f"{target:<10} {d.get('factory') or d.get('type')}, {d.get('vectors', 0)} vectors"
            + (f" ({', '.join(extra)})" if extra else "")
        )
    total, cat, fai = (
        stats["sizes"][k] / mib for k in ("total_bytes", "catalog_bytes", "faiss_bytes")
    )
    lines.append(f"size       {total:.1f} MiB (catalog {cat:.1f}, faiss {fai:.1f})")
    typer.echo("\n".join(lines))


@app.command("export")
def export_command(
    index: IndexDir,
    out: Path = typer.Option(..., "--out", "-o", help="New directory for the export."),
    format: str = typer.Option("npy", "--format", help="npy (clip-retrieval) or parquet."),
) -> None:
    """Write the image vectors with ids and paths for other tools (clip-retrieval layout)."""
    from indexer.export import export_index
    from indexer.index import Index

    with Index.open(index, lazy=True) as idx:
        done = export_index(idx, out, format)
    typer.echo(f"exported {done['images']} images (dim {done['dim']}) to {done['directory']}")

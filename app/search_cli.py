"""``clipsearch search "query"``: asks a running server for the index if there is one, else
searches the index in this process (text queries without torch when the index has its exported
text tower, see ``indexer.query_text``)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import typer

from app.remote import URL_ENV, Unreachable, find_server, post_json
from indexer.cli import IndexDir
from indexer.errors import QueryError
from indexer.query import Query, Term, parse_query
from indexer.refine import TakenRange

HIT_KEYS = (
    "id", "score", "kind", "path", "text", "width", "height", "duplicates", "taken", "camera",
)  # fmt: skip


def _ask_server(
    url: str,
    query: Query,
    image: Path | None,
    k: int,
    target: str,
    filters: dict[str, str],
    cutoff: dict[str, float],
) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"k": k, "target": target, **cutoff}
    if filters:
        body["filter"] = filters
    if image is None:
        text = query.plain_text or query.with_absolute_paths().describe()
        answer = post_json(url, "/v1/search/text", {"query": text, **body})
    else:
        try:
            data = image.read_bytes()
        except OSError as e:
            raise QueryError(f"cannot read the query image {image}: {e.strerror}") from e
        body["image"] = base64.b64encode(data).decode()
        answer = post_json(url, "/v1/search/image", body)
    return [{key: h.get(key) for key in HIT_KEYS} for h in answer["hits"]]


def _search_here(
    index: Path,
    query: Query,
    k: int,
    target: str,
    filters: dict[str, str],
    cutoff: dict[str, float],
    device: str,
) -> list[dict[str, Any]]:
    # One query is a few small matrix products: BLAS threads only add start-up and contention
    # (3-10x slower on 2 busy cores). numpy is first imported below, so this still applies.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from indexer.index import Index
    from indexer.query import search

    with Index.open(index, device=device, lazy=True) as idx:
        hits = search(
            idx,
            query,
            k,
            target,
            filters.get("path_prefix"),
            min_score=cutoff.get("min_score"),
            min_relative=cutoff.get("min_relative"),
            taken=TakenRange.parse(filters.get("taken_from"), filters.get("taken_to")),
        )
        return [h.to_dict() for h in hits]


def _print(hits: list[dict[str, Any]], as_json: bool, paths: bool) -> None:
    if as_json:
        typer.echo(json.dumps(hits, indent=2))
        return
    if paths:
        for h in hits:
            typer.echo(h["path"] if h["kind"] == "image" else h["text"])
        return
    if not hits:
        typer.echo("no results", err=True)
    for rank, h in enumerate(hits, 1):
        what = h["path"] if h["kind"] == "image" else h["text"]
        typer.echo(f"{rank:3d}  {h['score']:+.4f}  #{h['id']}  {what}")


def search_command(
    index: IndexDir,
    query: str | None = typer.Argument(
        None,
        help='Words, or an expression: \'"beach" + "sunset" - 0.5:"people"\', '
        "'#42 + \"at night\"', 'image:photo.jpg - \"blurry\"'.",
    ),
    image: Path | None = typer.Option(
        None, "--image", help="Search with this image file instead of words."
    ),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    target: str = typer.Option("images", "--target", help="images or texts."),
    path_prefix: str | None = typer.Option(
        None, "--path-prefix", help="Only images in this folder (or below)."
    ),
    taken_from: str | None = typer.Option(
        None, "--taken-from", help="Only photos taken on or after this date (EXIF, YYYY-MM-DD)."
    ),
    taken_to: str | None = typer.Option(
        None, "--taken-to", help="Only photos taken on or before this date (EXIF, YYYY-MM-DD)."
    ),
    min_score: float | None = typer.Option(
        None, "--min-score", help="Drop hits scoring below this (cosine, -1..1)."
    ),
    min_relative: float | None = typer.Option(
        None,
        "--min-relative",
        help="Drop hits scoring below this fraction of the best score (0-1]. Cutoffs trade "
        "recall away: see docs/benchmarks.md.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
    paths: bool = typer.Option(
        False, "--paths", help="Print only the paths (texts for --target texts), one a line."
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        envvar=URL_ENV,
        help="Ask the server at this URL. Default: the server announced for --index, if up.",
    ),
    local: bool = typer.Option(
        False, "--local", help="Search in this process even when a server is up."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (local search)."),
) -> None:
    """Find the images (or texts) nearest to words or to an image."""
    if (query is None) == (image is None):
        raise QueryError(
            'give a text query or --image PATH (one of them): clipsearch search "a dog"'
        )
    if as_json and paths:
        raise QueryError("--json and --paths are two output formats: pick one")
    prefix = os.path.abspath(os.path.expanduser(path_prefix)) if path_prefix else None
    parsed = parse_query(query) if query is not None else Query((Term(1.0, path=str(image)),))
    cutoff = {
        name: value
        for name, value in (("min_score", min_score), ("min_relative", min_relative))
        if value is not None
    }
    filters = {
        name: value
        for name, value in (
            ("path_prefix", prefix),
            ("taken_from", taken_from),
            ("taken_to", taken_to),
        )
        if value is not None
    }
    TakenRange.parse(taken_from, taken_to)  # a malformed date is one line here, not a 422
    server = None if local else (url or find_server(index))
    if server is not None:
        try:
            _print(_ask_server(server, parsed, image, k, target, filters, cutoff), as_json, paths)
            return
        except Unreachable:
            if url is not None:
                raise  # the server asked for by name is down: say so, do not guess
    _print(_search_here(index, parsed, k, target, filters, cutoff, device), as_json, paths)

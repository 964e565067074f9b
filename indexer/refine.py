"""Nearest neighbours made into clean results: the query's own images left out, byte-identical
files (same SHA-256, so the same vector and score) collapsed into one hit that lists the others,
and an optional relevance cutoff.

A cutoff is a trade: on Flickr8k val a floor that removes most wrong hits also removes the right
one for many queries (``docs/benchmarks.md``, "Relevance cutoffs"), because the scale of scores
varies from query to query. Both kinds are offered, and neither is on by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING

from indexer.errors import QueryError

if TYPE_CHECKING:
    import numpy as np

    from indexer.index import Index
    from indexer.results import Hit


def collapse_duplicates(hits: list[Hit], sha256: dict[int, str | None]) -> list[Hit]:
    """Keep the first (best) hit of each content; it carries the other paths in ``duplicates``."""
    first: dict[str, int] = {}
    out: list[Hit] = []
    for hit in hits:
        digest = sha256.get(hit.id)
        if digest is None or hit.kind != "image":
            out.append(hit)
            continue
        if digest in first:
            keep = out[first[digest]]
            out[first[digest]] = dataclasses.replace(
                keep, duplicates=(*keep.duplicates, hit.path or "")
            )
            continue
        first[digest] = len(out)
        out.append(hit)
    return out


def search_clean(
    index: Index,
    vector: np.ndarray,
    k: int,
    target: str = "images",
    path_prefix: str | None = None,
    exclude: Collection[int] = (),
) -> list[Hit]:
    """``k`` clean hits for one unit ``vector`` (fetching more while duplicates use up places)."""
    fetch = k + len(exclude)
    while True:
        hits = index.search_vectors(vector[None, :], fetch, target, path_prefix)[0]
        kept = [h for h in hits if h.id not in exclude]
        clean = collapse_duplicates(kept, index.catalog.sha256_of([h.id for h in kept]))
        if len(clean) >= k or len(hits) < fetch:
            return clean[:k]
        fetch *= 2


def search_clean_batch(
    index: Index,
    vectors: np.ndarray,
    k: int,
    target: str = "images",
    path_prefix: str | None = None,
) -> list[list[Hit]]:
    """``search_clean`` for a batch: one FAISS call for all rows; only a row that duplicates
    left short of ``k`` is searched again on its own."""
    batch = index.search_vectors(vectors, k, target, path_prefix)
    ids = [h.id for hits in batch for h in hits]
    sha256 = index.catalog.sha256_of(ids) if target == "images" else {}
    out = []
    for row, hits in enumerate(batch):
        clean = collapse_duplicates(hits, sha256)
        if len(clean) < len(hits):
            clean = search_clean(index, vectors[row], k, target, path_prefix)
        out.append(clean)
    return out


def apply_cutoff(
    hits: list[Hit], min_score: float | None = None, min_relative: float | None = None
) -> list[Hit]:
    """Hits (best first) scoring at least ``min_score`` (cosine) and at least ``min_relative``
    times the best hit's score (0 < min_relative <= 1; with a best score <= 0 only ties stay)."""
    if min_relative is not None and not 0 < min_relative <= 1:
        raise QueryError(f"min_relative must be in (0, 1], not {min_relative}")
    floor = -float("inf") if min_score is None else min_score
    if min_relative is not None and hits:
        best = hits[0].score
        floor = max(floor, best * min_relative if best > 0 else best)
    return [h for h in hits if h.score >= floor]

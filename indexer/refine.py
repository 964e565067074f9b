"""Nearest neighbours made into clean results: the query's own images left out, byte-identical
files (same SHA-256, so the same vector and score) collapsed into one hit that lists the others,
and an optional relevance cutoff.

A cutoff is a trade: on Flickr8k val a floor that removes most wrong hits also removes the right
one for many queries (``docs/benchmarks.md``, "Relevance cutoffs"), because the scale of scores
varies from query to query. Both kinds are offered, and neither is on by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class TakenRange:
    """Images whose EXIF date taken is in [start, end] (ISO 8601 text; images without a date are
    left out). A bare date as ``end`` means the whole of that day."""

    start: str | None = None
    end: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> TakenRange | None:
        if start is None and end is None:
            return None
        bounds = []
        for name, value in (("taken_from", start), ("taken_to", end)):
            if value is None:
                bounds.append(None)
                continue
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise QueryError(
                    f"{name} {value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"
                ) from None
            whole_day = name == "taken_to" and len(value) <= 10
            bounds.append(
                parsed.strftime("%Y-%m-%dT23:59:59" if whole_day else "%Y-%m-%dT%H:%M:%S")
            )
        return cls(bounds[0], bounds[1])

    def __contains__(self, hit: object) -> bool:
        taken = getattr(hit, "taken", None)
        if taken is None:
            return False
        return (self.start is None or taken >= self.start) and (
            self.end is None or taken <= self.end
        )


def search_clean(
    index: Index,
    vector: np.ndarray,
    k: int,
    target: str = "images",
    path_prefix: str | None = None,
    exclude: Collection[int] = (),
    taken: TakenRange | None = None,
    specific: bool = False,
) -> list[Hit]:
    """``k`` clean hits for one unit ``vector`` (fetching more while duplicates, named images or
    the date range use up places, up to the whole index); ``specific``: a specific text query
    (``Index.search_vectors``)."""
    if taken is not None and target != "images":
        raise QueryError("taken_from/taken_to filter images; drop them for target 'texts'")
    fetch = k + len(exclude)
    while True:
        hits = index.search_vectors(vector[None, :], fetch, target, path_prefix, [specific])[0]
        kept = [h for h in hits if h.id not in exclude and (taken is None or h in taken)]
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
    specific: Sequence[bool] | None = None,
) -> list[list[Hit]]:
    """``search_clean`` for a batch: one FAISS call for all rows; only a row that duplicates
    left short of ``k`` is searched again on its own."""
    flags = [False] * len(vectors) if specific is None else list(specific)
    batch = index.search_vectors(vectors, k, target, path_prefix, flags)
    ids = [h.id for hits in batch for h in hits]
    sha256 = index.catalog.sha256_of(ids) if target == "images" else {}
    out = []
    for row, hits in enumerate(batch):
        clean = collapse_duplicates(hits, sha256)
        if len(clean) < len(hits):
            clean = search_clean(index, vectors[row], k, target, path_prefix, specific=flags[row])
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
        best = max(h.score for h in hits)  # the first, unless the hubness correction reordered
        floor = max(floor, best * min_relative if best > 0 else best)
    return [h for h in hits if h.score >= floor]

"""Relevance cutoffs on Flickr8k val: what an absolute or a relative score floor costs in recall.

Indexes the 1,000 val photos with the shipped model (once, into ``--index``), searches each of the
5,000 val captions for its top ``-k`` images, and applies each cutoff to those hits. Each caption
has one right photo, so per cutoff the table gives: recall@k (the right photo is still among the
kept hits), how many hits are kept on average, the share of queries left with no hit at all, and
precision (right photos kept / hits kept).

    python benchmarks/bench_cutoff.py --data ../shared/data/flickr8k --k 10
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from indexer import Index
from indexer.refine import apply_cutoff
from indexer.results import Hit

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = (None, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5)
RELATIVE = (0.8, 0.9, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/flickr8k")
    parser.add_argument("--index", type=Path, default=ROOT / "runs" / "bench-cutoff-index")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    with open(args.data / "captions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    paths = sorted({str((args.data / r["filepath"]).resolve()) for r in rows})
    with Index.create(args.index, workers=0) as index:
        if index.stats()["images"] < len(paths):
            index.add_images(paths)
        vectors = index.embed_texts([r["caption"] for r in rows])
        batches = [
            index.search_vectors(vectors[i : i + 256], args.k) for i in range(0, len(rows), 256)
        ]
    results: list[list[Hit]] = [hits for batch in batches for hits in batch]
    truth = [str((args.data / r["filepath"]).resolve()) for r in rows]
    scores = np.array([h[0].score for h in results])
    print(
        f"{len(rows)} val captions, {len(paths)} photos, top {args.k}; best-hit score: "
        f"median {np.median(scores):.3f}, 5th-95th percentile "
        f"{np.percentile(scores, 5):.3f}-{np.percentile(scores, 95):.3f}\n"
    )
    print(f"| cutoff | recall@{args.k} | hits kept (mean) | queries with none | precision |")
    print("| --- | --- | --- | --- | --- |")
    cutoffs = [(a, None) for a in ABSOLUTE] + [(None, r) for r in RELATIVE]
    for min_score, min_relative in cutoffs:
        kept = [apply_cutoff(h, min_score, min_relative) for h in results]
        right = [any(h.path == t for h in hits) for hits, t in zip(kept, truth, strict=True)]
        n_kept = np.array([len(h) for h in kept])
        label = (
            "none"
            if min_score is None and min_relative is None
            else (f"score >= {min_score}" if min_score is not None else f">= {min_relative} x best")
        )
        precision = sum(right) / max(1, int(n_kept.sum()))
        print(
            f"| {label} | {np.mean(right):.3f} | {n_kept.mean():.2f} | "
            f"{np.mean(n_kept == 0):.3f} | {precision:.3f} |"
        )


if __name__ == "__main__":
    main()

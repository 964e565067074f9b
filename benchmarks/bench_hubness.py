"""The hubness correction through the real search path: recall and query time, with and without.

    python benchmarks/bench_hubness.py --index runs/demo-index \\
        --captions ../shared/data/flickr8k/captions.csv --split val

Every caption of ``--split`` whose photo is in the index is a query; ``Index.search_vectors``
answers it one at a time (as the service does a lone query), once with the correction
(``specific=[True]``: what a sentence query gets) and once without. The correction's first pass
computes each candidate's penalty (cold); the second finds them cached (warm). Prints recall@K of
the index's own answers and the median time a query, side by side in one run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _queries(index, path: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(captions, id of each caption's photo) for the photos the index holds."""
    ids, _ = index.catalog.vectors("image")
    by_name = {Path(index.get(int(i)).path).name: int(i) for i in ids}
    texts, owners = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("split") == split and Path(row["filepath"]).name in by_name:
                texts.append(row["caption"])
                owners.append(by_name[Path(row["filepath"]).name])
    return texts, np.array(owners)


def _run(index, vectors: np.ndarray, owners: np.ndarray, specific: bool) -> tuple[list, float]:
    ranks, times = [], []
    for v, owner in zip(vectors, owners, strict=True):
        t0 = time.perf_counter()
        hits = index.search_vectors(v[None], k=10, specific=[specific])[0]
        times.append(time.perf_counter() - t0)
        found = [h.id for h in hits]
        ranks.append(found.index(owner) if owner in found else 10)
    ranks = np.array(ranks)
    return [100 * float(np.mean(ranks < k)) for k in (1, 5, 10)], 1000 * float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--captions", type=Path, required=True)
    p.add_argument("--split", default="val")
    args = p.parse_args()
    from indexer import Index

    index = Index.open(args.index)
    if index.hub_penalties is None:
        raise SystemExit(f"the model of {args.index} has no query bank: nothing to compare")
    texts, owners = _queries(index, args.captions, args.split)
    vectors = np.concatenate(
        [index.embed_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    )
    rows = [("plain", *_run(index, vectors, owners, False))]
    rows.append(("corrected, cold", *_run(index, vectors, owners, True)))
    rows.append(("corrected, warm", *_run(index, vectors, owners, True)))
    base = rows[0][2]
    print(f"{len(texts)} queries over {index.stats()['images']} images\n")
    print("| ranking | R@1 | R@5 | R@10 | p50 ms/query | vs plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, recalls, p50 in rows:
        r = " | ".join(f"{x:.2f}" for x in recalls)
        print(f"| {name} | {r} | {p50:.2f} | {p50 / base:.2f}x |")
    index.close()


if __name__ == "__main__":
    main()

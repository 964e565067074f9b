"""CPU encoding with and without ``models.allocator``'s malloc settings, side by side in one run.

    .venv/bin/python benchmarks/bench_allocator.py [--model clipsearch-base] [--repeats 3]

malloc settings are per process and glibc reads its environment at start, so every measurement is
a fresh process: tuned (the default) or with ``CLIPSEARCH_MALLOC_TUNING=0``, in alternating order.
Each reports images/s (batch 32, the model's input size, best of 4 batches after a warm-up),
texts/s (batch 64), the share of its CPU time spent in the kernel and its peak RSS. A model
without shipped weights runs with random ones (the same arithmetic).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(model: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_models import best_rate

    from models import allocator
    from models.encoder import Encoder
    from models.registry import shipped_weights

    encoder = Encoder.load(model, None if shipped_weights(model) else "none", device="cpu")
    x = torch.randn(32, 3, encoder.image_size, encoder.image_size)
    texts = [f"a dog number {i} runs across the green grass in a park ." for i in range(64)]
    start = resource.getrusage(resource.RUSAGE_SELF)
    images = best_rate(lambda: encoder.encode_image_tensor(x), 32, repeats=4)
    text = best_rate(lambda: encoder.encode_texts(texts, batch_size=64), 64, repeats=4)
    end = resource.getrusage(resource.RUSAGE_SELF)
    user, system = end.ru_utime - start.ru_utime, end.ru_stime - start.ru_stime
    print(
        json.dumps(
            {
                "tuned": allocator.tune(),
                "precision": encoder.precision,
                "images/s": images,
                "texts/s": text,
                "kernel share": system / (user + system),
                "peak RSS MiB": end.ru_maxrss / 1024,
            }
        )
    )


def measure(model: str, tuned: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["CLIPSEARCH_MALLOC_TUNING"] = "1" if tuned else "0"
    cmd = [sys.executable, __file__, "--child", "--model", model]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"child failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["tuned"] != tuned:
        raise SystemExit(f"asked for tuned={tuned}, the child reports {result['tuned']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipsearch-base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model)
        return
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.repeats):
        for tuned in (True, False) if r % 2 == 0 else (False, True):
            runs[tuned].append(measure(args.model, tuned))
            print(f"run {r}, tuned={tuned}: {runs[tuned][-1]}", file=sys.stderr, flush=True)
    keys = ("images/s", "texts/s", "kernel share", "peak RSS MiB")
    median = {t: {k: statistics.median(x[k] for x in runs[t]) for k in keys} for t in runs}
    print(f"{args.model}, {runs[True][0]['precision']}, {args.repeats} fresh processes each, "
          "medians\n")  # fmt: skip
    print("| what | glibc defaults | tuned | tuned / defaults |")
    print("| --- | --- | --- | --- |")
    for k in keys:
        off, on = median[False][k], median[True][k]
        print(f"| {k} | {off:.2f} | {on:.2f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()

"""Bulk indexing throughput: our pipeline against the encoder alone and a naive loop, in one run.

    .venv/bin/python benchmarks/bench_indexer.py [--images DIR] [-n 320] [--model ViT-B-32]
        [--pretrained none] [--precision bf16] [--batch-size 32] [--workers 2]

Three ways to embed the same N images with the same encoder object:

* encoder alone: the images decoded and preprocessed beforehand (not timed), then only
  ``encode_image_tensor`` per batch: the ceiling for any pipeline;
* pipeline: ``Index.add_images`` on a fresh index, end to end (scan, read + hash + decode
  alongside the encoder, encode, commit batches to SQLite, build and save FAISS), once with the
  default decoding (``--workers`` unset: worker processes on the cores the encoder leaves free,
  else a decode thread) and once with ``--compare-workers`` DataLoader worker processes;
* naive loop: one process, per batch open → preprocess → encode (what a first script does),
  once decoding JPEGs in full and once in draft mode at the model's input size as the pipeline
  does, so that the pipeline is compared with a loop that decodes the same way.

The encoder alone is measured before and after the other two and averaged, so drift on a shared
machine shows up as a spread instead of a bias. Prints a markdown table (images/s and the ratio
to the encoder alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer import Index  # noqa: E402
from indexer.pipeline import default_workers  # noqa: E402
from models.encoder import Encoder  # noqa: E402
from models.images import open_rgb  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "flickr8k" / "images"


def encoder_alone(encoder: Encoder, tensors: list[torch.Tensor], batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        encoder.encode_image_tensor(torch.stack(tensors[i : i + batch_size]))
    return time.perf_counter() - t0


def naive_loop(encoder: Encoder, paths: list[Path], batch_size: int, draft: bool) -> float:
    size = encoder.image_size if draft else None
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        batch = [encoder.preprocess(open_rgb(p, size)) for p in paths[i : i + batch_size]]
        encoder.encode_image_tensor(torch.stack(batch))
    return time.perf_counter() - t0


def pipeline(
    encoder: Encoder, folder: Path, batch_size: int, workers: int | None
) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        t0 = time.perf_counter()
        index = Index.create(Path(tmp) / "idx", encoder=encoder, batch_size=batch_size)
        report = index.add_images([folder], workers=workers)
        seconds = time.perf_counter() - t0
        index.close()
    return seconds, report.embedded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("-n", type=int, default=320, help="number of images (the first N by name)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--scale",
        type=int,
        default=1,
        help="decode-heavy variant: re-save each image N times larger (JPEG q90, not timed)",
    )
    ap.add_argument("--workers", type=int, default=None, help="default: the library's choice")
    ap.add_argument(
        "--compare-workers", type=int, default=2, help="worker processes for the second run"
    )
    args = ap.parse_args()

    warnings.simplefilter("ignore")
    files = sorted(
        p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )[: args.n]
    if len(files) < args.n:
        sys.exit(f"only {len(files)} images in {args.images}")
    n = len(files)
    encoder = Encoder.load(args.model, args.pretrained, device="cpu", precision=args.precision)

    # A folder holding exactly these N images (links, or larger copies for --scale).
    folder = Path(tempfile.mkdtemp(prefix="bench-images-"))
    for p in files:
        if args.scale > 1:
            with Image.open(p) as im:
                big = im.convert("RGB").resize((im.width * args.scale, im.height * args.scale))
                big.save(folder / p.name, quality=90)
        else:
            os.symlink(p, folder / p.name)
    files = sorted(folder.iterdir())
    try:
        tensors = [encoder.preprocess(open_rgb(p)) for p in files]  # not timed
        encoder_alone(encoder, tensors[: args.batch_size], args.batch_size)  # warm-up
        alone_1 = encoder_alone(encoder, tensors, args.batch_size)
        pipe_s, embedded = pipeline(encoder, folder, args.batch_size, args.workers)
        assert embedded == n, f"pipeline embedded {embedded} of {n}"
        procs_s, embedded = pipeline(encoder, folder, args.batch_size, args.compare_workers)
        assert embedded == n, f"pipeline embedded {embedded} of {n}"
        naive_s = naive_loop(encoder, files, args.batch_size, draft=False)
        naive_draft_s = naive_loop(encoder, files, args.batch_size, draft=True)
        alone_2 = encoder_alone(encoder, tensors, args.batch_size)
    finally:
        shutil.rmtree(folder)

    alone = (alone_1 + alone_2) / 2
    workers = default_workers() if args.workers is None else args.workers
    mode = f"{workers} decode processes" if workers else "a decode thread"
    rows = [
        ("encoder alone (pre-decoded tensors)", alone, f"{n / alone_1:.1f} / {n / alone_2:.1f}"),
        (f"pipeline `Index.add_images`, default: {mode}", pipe_s, ""),
        (f"pipeline `Index.add_images`, {args.compare_workers} decode processes", procs_s, ""),
        ("naive loop: open → preprocess → encode, one process", naive_s, ""),
        ("naive loop, JPEG draft decode (as the pipeline)", naive_draft_s, ""),
    ]
    cmd = " ".join(
        [".venv/bin/python benchmarks/bench_indexer.py", *sys.argv[1:]]
        if sys.argv[1:]
        else [".venv/bin/python benchmarks/bench_indexer.py"]
    )
    what = f"{n} Flickr8k JPEGs" + (f" upscaled {args.scale}x" if args.scale > 1 else "")
    print(
        f"{what}, {args.model} (--pretrained {args.pretrained}), {args.precision}, "
        f"batch {args.batch_size}, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, {os.cpu_count()} CPUs ({platform.machine()}); `{cmd}`\n"
    )
    print("| path | seconds | images/s | ratio to encoder alone |")
    print("| --- | --- | --- | --- |")
    for name, seconds, note in rows:
        rate = n / seconds
        extra = f" (runs: {note})" if note else ""
        print(f"| {name} | {seconds:.1f} | {rate:.1f}{extra} | {alone / seconds:.2f} |")


if __name__ == "__main__":
    main()

"""Encoder and training throughput beside the machine's matmul peak, measured in one run.

    .venv/bin/python benchmarks/bench_models.py [--model ViT-B-32] [--batch 32] [--steps 1]
    .venv/bin/python benchmarks/bench_models.py --compare clipsearch-base clipsearch-flickr8k \
        ViT-B-32

Prints a markdown table. Absolute rates on shared machines drift; the ratio to the matmul peak
measured a moment before in the same process is the figure to compare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.distributed import init_distributed
from models.encoder import Encoder
from models.train import TrainConfig, Trainer

warnings.filterwarnings("ignore", message=".*random weights.*")


def best_rate(fn: Callable[[], None], work: float, repeats: int) -> float:
    """Work per second of the fastest of ``repeats`` timed calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return work / best


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return best_rate(lambda: a @ b, 2 * n**3 / 1e9, repeats=5)


def flops_of(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def encoder_rates(model: str, batch: int) -> dict[str, tuple[float, float]]:
    """images/s and GFLOP/s of the image tower, fp32 and bf16 weights."""
    out = {}
    for precision in ("fp32", "bf16"):
        encoder = Encoder.load(model, "none", device="cpu", precision=precision)
        x = torch.randn(batch, 3, encoder.image_size, encoder.image_size)
        gflop = flops_of(lambda e=encoder, x=x: e.encode_image_tensor(x)) / 1e9 / batch
        rate = best_rate(lambda e=encoder, x=x: e.encode_image_tensor(x), batch, repeats=3)
        out[precision] = (rate, rate * gflop)
    return out


def training_rate(model: str, batch: int, steps: int, precision: str) -> tuple[float, float]:
    """samples/s and GFLOP/s of full optimizer steps (forward, loss, backward, AdamW)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = ["filepath,caption"]
        for i in range(batch):
            Image.new("RGB", (64, 64), (i * 7 % 255, 90, 160)).save(root / f"{i}.png")
            lines.append(f"{i}.png,a photo number {i} of a small blue square on grey")
        (root / "pairs.csv").write_text("\n".join(lines) + "\n")
        cfg = TrainConfig(
            data=str(root / "pairs.csv"),
            out=str(root / "run"),
            model=model,
            pretrained="none",
            batch_size=batch,
            precision=precision,
            workers=0,
            epochs=1,
        )
        trainer = Trainer(cfg, init_distributed("cpu"))
        images, captions = next(iter(trainer.epoch_loader(0)))
        step = [(images, captions)]
        gflop = flops_of(lambda: trainer.train_step(step)) / 1e9 / batch
        rate = best_rate(lambda: [trainer.train_step(step) for _ in range(steps)], steps * batch, 2)
    return rate, rate * gflop


def inference_rates(model: str, pretrained: str | None, texts: list[str]) -> dict[str, float]:
    """images/s (batch 32) and texts/s (batch 64 and one at a time), bf16 and fp32 weights."""
    out = {}
    for precision in ("fp32", "bf16"):
        encoder = Encoder.load(model, pretrained, device="cpu", precision=precision)
        x = torch.randn(32, 3, encoder.image_size, encoder.image_size)
        out[f"images/s {precision}"] = best_rate(
            lambda e=encoder, x=x: e.encode_image_tensor(x), 32, 3
        )
        out[f"texts/s {precision}"] = best_rate(
            lambda e=encoder: e.encode_texts(texts[:64], batch_size=64), 64, 3
        )
        out[f"texts/s {precision} batch 1"] = best_rate(
            lambda e=encoder: [e.encode_texts([t]) for t in texts[:16]], 16, 3
        )
    return out


def compare_models(models: list[str]) -> None:
    """CPU inference speed of each model (shipped weights where they exist), in one run."""
    from models.data import read_pairs
    from models.encoder import auto_precision
    from models.registry import shipped_weights

    captions = Path(__file__).resolve().parents[2] / "shared/data/flickr8k/captions.csv"
    if captions.is_file():
        texts = [p.text for p in read_pairs(captions, split="val", check_images=False)[:64]]
    else:
        texts = [f"a dog number {i} runs across the green grass in a park ." for i in range(64)]
    rates = {m: inference_rates(m, None if shipped_weights(m) else "none", texts) for m in models}
    auto = auto_precision(torch.device("cpu"))
    print(f"one run, {torch.get_num_threads()} torch threads, images batch 32 (timm towers")
    print(f"channels-last), texts are Flickr8k val captions; 'auto' precision here: {auto}\n")
    print("| what | " + " | ".join(models) + " |")
    print("| --- |" + " --- |" * len(models))
    for key in rates[models[0]]:
        cells = [f"{rates[m][key]:.1f}" for m in models]
        print(f"| {key} | " + " | ".join(cells) + " |")
    first = models[0]
    for m in models[1:]:
        ratio = rates[first]["images/s fp32"] / rates[m]["images/s fp32"]
        print(f"\n{first} / {m}, images/s fp32: {ratio:.2f}x", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument(
        "--compare", nargs="+", metavar="MODEL", help="Compare these models' inference speed."
    )
    args = parser.parse_args()
    if args.compare:
        compare_models(args.compare)
        return
    torch.manual_seed(0)
    threads = torch.get_num_threads()

    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    enc = encoder_rates(args.model, args.batch)
    train = {p: training_rate(args.model, args.batch, args.steps, p) for p in ("fp32", "bf16")}
    peak_after = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}

    print(f"{args.model}, random weights, batch {args.batch}, {threads} torch threads\n")
    print("| what | precision | rate | GFLOP/s | of matmul peak |")
    print("| --- | --- | --- | --- | --- |")
    for p in ("fp32", "bf16"):
        print(f"| matmul n=2048 (peak) | {p} | | {peak[p]:.0f} | 1.00 |")
    for p in ("fp32", "bf16"):
        rate, gf = enc[p]
        print(f"| image encoder (inference) | {p} weights | {rate:.1f} img/s | {gf:.0f} "
              f"| {gf / peak[p]:.2f} |")  # fmt: skip
    for p in ("fp32", "bf16"):
        rate, gf = train[p]
        label = "fp32" if p == "fp32" else "bf16 autocast"
        print(f"| training step (both towers, AdamW) | {label} | {rate:.1f} samples/s | {gf:.0f} "
              f"| {gf / peak[p]:.2f} |")  # fmt: skip
    drift = {p: peak_after[p] / peak[p] for p in peak}
    print(f"\nmatmul peak re-measured at the end: fp32 x{drift['fp32']:.2f}, ", end="")
    print(f"bf16 x{drift['bf16']:.2f}")


if __name__ == "__main__":
    main()

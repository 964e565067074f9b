"""Deterministic generated data: coloured shapes on coloured backgrounds, with captions."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS_INDEX = {name: i for i, name in enumerate(COLOURS)}


def draw(shape: str, fg: str, bg: str, size: int = 64) -> Image.Image:
    """One picture of a ``fg`` ``shape`` on a ``bg`` background."""
    image = Image.new("RGB", (size, size), COLOURS[bg])
    d = ImageDraw.Draw(image)
    lo, hi = size // 5, size - size // 5
    if shape == "circle":
        d.ellipse([lo, lo, hi, hi], fill=COLOURS[fg])
    elif shape == "square":
        d.rectangle([lo, lo, hi, hi], fill=COLOURS[fg])
    elif shape == "triangle":
        d.polygon([(size // 2, lo), (lo, hi), (hi, hi)], fill=COLOURS[fg])
    else:
        w = size // 8
        d.rectangle([size // 2 - w, lo, size // 2 + w, hi], fill=COLOURS[fg])
        d.rectangle([lo, size // 2 - w, hi, size // 2 + w], fill=COLOURS[fg])
    return image


def combos(n: int) -> list[tuple[str, str, str]]:
    """The first ``n`` distinct (shape, foreground, background) triples, fg != bg."""
    out = [(s, fg, bg) for s, fg, bg in itertools.product(SHAPES, COLOURS, COLOURS) if fg != bg]
    # Interleave so that small n still varies shape and both colours.
    out.sort(
        key=lambda c: (COLOURS_INDEX[c[1]] + COLOURS_INDEX[c[2]] * 3 + SHAPES.index(c[0]) * 7) % 29
    )
    return out[:n]


def make_dataset(root: Path, n: int = 64, size: int = 64, sep: str = ",") -> Path:
    """Write ``n`` images under ``root/images`` and ``root/captions.csv`` (filepath, caption)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (shape, fg, bg) in enumerate(combos(n)):
        name = f"images/{i:04d}_{fg}_{shape}_on_{bg}.png"
        draw(shape, fg, bg, size).save(root / name)
        rows.append((name, f"a {fg} {shape} on a {bg} background"))
    out = root / ("captions.tsv" if sep == "\t" else "captions.csv")
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    return out

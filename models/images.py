"""Opening images the same way everywhere: EXIF orientation applied, every mode made RGB."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` upright and in RGB, whatever its mode (P, RGBA, LA, CMYK, I;16, ...)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greys: scale into 8 bits instead of clipping everything to white.
        image = image.convert("I")
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    return image.convert("RGB")


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an upright RGB image.

    ``draft_size`` lets JPEG decoding downscale by a power of two on the fly (several times faster
    for photos much larger than the model's input) while staying at least that large.
    """
    with Image.open(path) as image:
        image.seek(0)  # first frame of GIFs and multi-page TIFFs
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(image)

"""Turning untrusted bytes into a decoded image, or into a 4xx that says what is wrong.

Checks run cheapest first: size cap, header parse, pixel count (before any pixel is decoded, so
a decompression bomb costs nothing), then the full decode (which catches truncated files).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageFile

from app.errors import ApiError, bad_request
from models.images import to_rgb

_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def too_large(n: int, cap: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"the upload is {n} bytes, over the {cap}-byte cap (CLIPSEARCH_MAX_UPLOAD_BYTES)",
    )


def b64decode(data: str, what: str = "image") -> bytes:
    """Decode standard base64, with or without a ``data:...;base64,`` prefix."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{what} is not valid base64: {e}", "invalid_base64") from e


def decoded_pixels(data: bytes, max_bytes: int, max_pixels: int, draft: int | None) -> int:
    """How many pixels ``data`` will decode to (header only), or the 4xx of ``decode_image``."""
    _check_size(data, max_bytes)
    image = open_checked(data, max_pixels)
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    return image.width * image.height


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise bad_request("the upload is empty", "empty_upload")


def decode_image(
    data: bytes, max_bytes: int, max_pixels: int, draft: int | None = None
) -> Image.Image:
    """Decode ``data`` fully into an upright RGB image, or raise an ``ApiError``."""
    _check_size(data, max_bytes)
    image = open_checked(data, max_pixels)
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        _check_complete(data, image.format)
    try:
        image.load()
    except Exception as e:  # PIL decoders raise many types (OSError, SyntaxError, struct.error...)
        raise ApiError(
            400, "corrupt_image", f"the image could not be decoded ({image.format}): {e}"
        ) from e
    return to_rgb(_reduced(image, draft) if draft else image)


def _reduced(image: Image.Image, size: int) -> Image.Image:
    """An image far larger than the model's input, box-reduced by a whole factor to at least
    twice that size (what JPEG draft does while decoding), so that the conversions after it
    copy a small image, not a 120 MB one."""
    factor = min(image.size) // (2 * size)
    if factor < 2:
        return image
    if image.mode == "1":
        image = image.convert("L")
    try:
        return image.reduce(factor)
    except ValueError:  # a mode reduce does not take (P, CMYK...): converted at full size
        return image


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only and refuse images with more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.seek(0)
    except Image.DecompressionBombError as e:
        raise _bomb(str(e), max_pixels) from e
    except Exception as e:
        raise ApiError(
            415,
            "not_an_image",
            "the upload is not an image this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF)",
        ) from e
    width, height = image.size
    if width * height > max_pixels:
        raise _bomb(f"{width}x{height} is {width * height} pixels", max_pixels)
    return image


def _bomb(what: str, max_pixels: int) -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"the image is too large to decode safely: {what}, over the {max_pixels}-pixel limit "
        "(CLIPSEARCH_MAX_IMAGE_PIXELS); a decompression bomb is refused",
    )


def _check_complete(data: bytes, fmt: str | None) -> None:
    """With PIL's global LOAD_TRUNCATED_IMAGES on, load() pads short files; decode strictly here."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(io.BytesIO(data)) as strict:
            strict.load()
    except Exception as e:
        raise ApiError(400, "corrupt_image", f"the image could not be decoded ({fmt}): {e}") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def save_upload(data: bytes, image_format: str | None, directory: Path) -> Path:
    """Store the original bytes under a content-addressed name (re-uploads reuse the file)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = _EXTENSIONS.get(image_format or "", ".img")
    path = directory / f"{hashlib.sha256(data).hexdigest()[:32]}{ext}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path.resolve()

"""Reading and decoding one image file safely: every failure becomes a :class:`Skip` with a reason.

The file is read once; its bytes give both the content hash and the decoded image. Images larger
than a pixel cap are refused from their header, before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from indexer.catalog import hash_key
from indexer.exif import PhotoInfo, photo_info
from models.images import to_rgb

# Every reason a file can be skipped for (the catalog's ``reason`` column).
REASONS = {
    "empty": "the file has zero bytes",
    "truncated": "the image data ends early",
    "not_an_image": "not an image despite its extension",
    "corrupt": "the image data cannot be decoded",
    "decompression_bomb": "more pixels than the cap (--max-pixels / CLIPSEARCH_MAX_PIXELS)",
    "permission_denied": "no permission to read it",
    "broken_symlink": "a symbolic link to nothing",
    "symlink_loop": "a symbolic link that loops",
    "vanished": "deleted while indexing",
    "unreadable": "an I/O or file-system error",
}
MAX_PIXELS_ENV = "CLIPSEARCH_MAX_PIXELS"
WORKER_NICE = 10  # decode workers yield the CPU to a CPU encoder (see pipeline.batches)
# PIL's own hard limit (twice Image.MAX_IMAGE_PIXELS): ~179 megapixels.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
_EXIF_ORIENTATION = 0x0112
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
)


class Skip(Exception):
    """Why a file cannot be indexed; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail or REASONS.get(reason, "")


def resolve_max_pixels(value: int | None = None) -> int:
    """An explicit cap, else ``$CLIPSEARCH_MAX_PIXELS``, else PIL's hard limit."""
    if value:
        return int(value)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            pass
    return DEFAULT_MAX_PIXELS


def _open(path: str) -> BinaryIO:
    return open(path, "rb")  # one seam for tests to fake file-system errors


def read_bytes(path: str) -> bytes:
    """The whole file, or a :class:`Skip` saying why not."""
    try:
        with _open(path) as f:
            data = f.read()
    except PermissionError as e:
        raise Skip("permission_denied", e.strerror or str(e)) from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise Skip("broken_symlink", f"points to {os.readlink(path)}") from None
        raise Skip("vanished") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Skip("symlink_loop") from None
        raise Skip("unreadable", e.strerror or str(e)) from None
    if not data:
        raise Skip("empty")
    return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Decoded:
    image: Image.Image  # upright RGB, possibly reduced by JPEG draft mode
    width: int  # upright size of the full image
    height: int
    info: PhotoInfo = field(default_factory=PhotoInfo)  # date taken, camera (EXIF)


def decode(data: bytes, max_pixels: int, draft_size: int | None = None) -> Decoded:
    """Decode the first frame into an upright RGB image, or raise :class:`Skip`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF chatter
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise Skip(
                        "decompression_bomb",
                        f"{width}x{height} = {width * height} pixels, over the cap of {max_pixels}",
                    )
                try:
                    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
                except Exception:  # a damaged EXIF block must not cost the picture
                    orientation = 1
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
                info = photo_info(image)
                image.seek(0)  # first frame of GIFs and multi-page TIFFs
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()
                try:
                    rgb = to_rgb(image)
                except (OSError, ValueError, KeyError, TypeError):
                    # EXIF transposition failed on a broken block: keep the pixels as stored.
                    rgb = image.convert("RGB")
    except Skip:
        raise
    except Image.DecompressionBombError as e:
        raise Skip("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        fmt = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if fmt is not None:
            raise Skip("corrupt", f"starts like a {fmt} file but has no readable header") from None
        raise Skip("not_an_image", "no image format recognises it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        msg = str(e)
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise Skip("truncated", msg) from None
        raise Skip("corrupt", msg or type(e).__name__) from None
    return Decoded(rgb, width, height, info)


@dataclass
class Item:
    """What happened to one file of the job (``pos`` is its position in the job's path list)."""

    pos: int
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    info: PhotoInfo = field(default_factory=PhotoInfo)
    reason: str | None = None
    detail: str = ""
    reuse: bool = False  # content already has a vector: not decoded


def decode_file(
    pos: int,
    path: str,
    preprocess: Callable[[Image.Image], Any],
    max_pixels: int,
    draft_size: int | None = None,
    known: Collection[int] = frozenset(),
) -> tuple[Item, Any]:
    """Read, hash, decode and ``preprocess`` one file of a job: (its item, the preprocessed image
    or None). Never raises; a file whose hash is in ``known`` is not decoded. Imports no torch,
    so processes that only decode (Ray's decode tasks) start light."""
    try:
        data = read_bytes(path)
        sha = sha256_hex(data)
        if hash_key(sha) in known:
            return Item(pos, sha, reuse=True), None
        decoded = decode(data, max_pixels, draft_size)
        image = preprocess(decoded.image)
        return Item(pos, sha, decoded.width, decoded.height, decoded.info), image
    except Skip as s:
        return Item(pos, reason=s.reason, detail=s.detail), None
    except Exception as e:  # one strange file must never end the run
        return Item(pos, reason="corrupt", detail=f"{type(e).__name__}: {e}"), None

"""What a photo's EXIF says about it, read at index time: when it was taken, and with what camera.

Dates become ISO 8601 text (``2023-07-14T18:02:11``, local time as the camera wrote it, no zone),
so the catalog compares and range-filters them as strings. A damaged or absent block gives None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME_DIGITIZED = 0x9004
_DATE_TIME = 0x0132
_MAKE = 0x010F
_MODEL = 0x0110
_EXIF_DATE = re.compile(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class PhotoInfo:
    taken: str | None = None  # ISO 8601, seconds
    camera: str | None = None  # "Make Model", e.g. "Apple iPhone 12"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def iso_date(value: object) -> str | None:
    """``2023:07:14 18:02:11`` as ``2023-07-14T18:02:11``; None for blanks and nonsense."""
    text = _text(value)
    m = _EXIF_DATE.match(text or "")
    if m is None or m.group(1) == "0000":
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def photo_info(image: Image.Image) -> PhotoInfo:
    """Date taken (original, else digitized, else file date) and camera of an opened image."""
    try:
        exif = image.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a damaged EXIF block must not cost the picture
        return PhotoInfo()
    taken = next(
        (
            d
            for d in (
                iso_date(sub.get(_DATE_TIME_ORIGINAL)),
                iso_date(sub.get(_DATE_TIME_DIGITIZED)),
                iso_date(exif.get(_DATE_TIME)),
            )
            if d
        ),
        None,
    )
    make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    if make and model and not model.lower().startswith(make.lower().split()[0]):
        camera: str | None = f"{make} {model}"
    else:
        camera = model or make
    return PhotoInfo(taken, camera)

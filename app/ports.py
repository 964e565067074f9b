"""What the service needs from an index and its encoder, as Protocols.

``indexer.Index`` and ``models.Encoder`` satisfy them; so can a test double or another backend,
without the service importing either (or torch) to type its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from indexer.results import Hit, IndexReport


class Provenance(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class EncoderPort(Protocol):
    """Embeds texts and images into the index's space (L2-normalised float32 rows)."""

    @property
    def dim(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def provenance(self) -> Provenance: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...

    def encode_images(
        self, images: Sequence[Image.Image | str | Path], batch_size: int = ...
    ) -> np.ndarray: ...


class IndexPort(Protocol):
    """The searchable, changeable collection the service serves (``indexer.Index``)."""

    directory: Path

    @property
    def dim(self) -> int: ...

    @property
    def encoder(self) -> EncoderPort: ...

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = ...,
        target: str = ...,
        path_prefix: str | None = ...,
        specific: Sequence[bool] | None = ...,
    ) -> list[list[Hit]]: ...

    def get(self, id: int) -> Hit | None: ...

    def stats(self) -> dict[str, Any]: ...

    def add_images(self, paths: Sequence[str | Path], progress: bool = ...) -> IndexReport: ...

    def remove(self, ids: Sequence[int]) -> int: ...

    def reload_if_changed(self) -> bool: ...

    def close(self) -> None: ...

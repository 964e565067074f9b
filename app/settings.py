"""Service settings: defaults here, overridden by ``CLIPSEARCH_*`` environment variables or the CLI.

Lists (``CLIPSEARCH_CORS_ORIGINS``) are JSON in the environment: ``'["https://a.example"]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told; each field is ``CLIPSEARCH_<NAME>`` in the env."""

    model_config = SettingsConfigDict(env_prefix="CLIPSEARCH_", extra="ignore")

    index_dir: Path | None = Field(None, description="Index directory made by the indexer.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="Where the encoder runs: auto, cpu, cuda.")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None, description="Encoder precision; default auto: bf16 with AMX or a GPU, else fp32."
    )

    api_key: SecretStr | None = Field(
        None, description="Key for writes; writes are off without it."
    )
    read_key: SecretStr | None = Field(
        None, description="Key for reads; reads are open without it."
    )

    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Cap on one uploaded file."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Cap on a whole request body (batches, base64)."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Larger images are refused as decompression bombs."
    )
    max_request_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Cap on the pixels all images of one request decode to (after JPEG draft).",
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, description="Uploads decoded at once (each costs its decoded size in memory)."
    )
    max_queued_decodes: int = Field(
        32, ge=0, description="Uploads that may wait for a decode; more are refused with 429."
    )
    max_k: int = Field(100, ge=1, le=10_000)
    max_query_chars: int = Field(1000, ge=1)
    max_batch_items: int = Field(
        64, ge=1, description="Most texts or images in one embed/add call."
    )

    batching: bool = Field(True, description="Coalesce concurrent text queries into one batch.")
    batch_window_ms: float = Field(2.0, ge=0, le=1000)
    max_batch: int = Field(32, ge=1, le=1024)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Threads for encoding and search; default: the cores less one, which is "
        "left to the event loop (HTTP, JSON) so the two do not fight over cores.",
    )

    reload_interval_s: float = Field(
        2.0, ge=0, description="How often to look for index changes; 0 turns it off."
    )
    thumbnail_size: int = Field(256, ge=16, le=2048)
    thumbnail_cache_items: int = Field(2048, ge=0)
    upload_dir: Path | None = Field(
        None, description="Where uploaded images are kept; default <index_dir>/uploads."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins whose pages may call this API from a browser; none by default.",
    )
    compat_index_name: str = Field(
        "clipsearch", description="The one index name the clip-retrieval endpoints report."
    )

    @field_validator("api_key", "read_key", "index_dir", "upload_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """``CLIPSEARCH_API_KEY=`` (empty, as compose files write it) means no key, not "" ."""
        return None if isinstance(v, str) and not v.strip() else v

    @property
    def inference_threads(self) -> int:
        if self.torch_threads is not None:
            return self.torch_threads
        try:
            cores = len(os.sched_getaffinity(0))  # what this process may use (cgroups, taskset)
        except AttributeError:
            cores = os.cpu_count() or 2
        return max(1, cores - 1)

    @property
    def uploads(self) -> Path:
        """The upload directory, resolved against the index directory."""
        if self.upload_dir is not None:
            return self.upload_dir
        if self.index_dir is None:
            raise ValueError("set index_dir or upload_dir")
        return self.index_dir / "uploads"

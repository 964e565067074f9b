"""A torch-free copy of a BERT text tower: a one-off text query needs neither torch nor open_clip.

Importing torch and open_clip takes seconds, while embedding one short query through a 6-layer
BERT is a few milliseconds of numpy. ``export`` (which needs torch) writes the tower's weights and
its tokenizer into one file; ``LiteTextEncoder`` reads it with numpy and ``tokenizers`` only
and reproduces open_clip's ``encode_text(normalize=True)`` for HF BERT towers with a mean pooler
and a linear (or no) projection. Other towers are not exportable (``export`` returns False) and
keep the full encoder.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.errors import ModelError

if TYPE_CHECKING:
    from models.encoder import Encoder

LITE_FORMAT_VERSION = 1
MAGIC = b"CSLTOWER"
ALIGN = 64
_erf = np.vectorize(math.erf, otypes=[np.float32])


def export(encoder: Encoder, path: Path, identity: dict[str, Any]) -> bool:
    """Write ``encoder``'s text tower to ``path`` (atomically); False if it is not supported.

    ``identity`` (model, weights hash, dim) is stored with it, so a reader can check that the
    copy belongs to the index it serves.
    """
    import torch

    text = getattr(encoder.model, "text", None)
    transformer = getattr(text, "transformer", None)
    config = getattr(transformer, "config", None)
    pooler = type(getattr(text, "pooler", None)).__name__
    proj = getattr(text, "proj", None)
    if config is None or getattr(config, "model_type", None) != "bert":
        return False
    if pooler != "MeanPooler":
        return False
    if not isinstance(proj, (torch.nn.Linear, torch.nn.Identity)) or (
        isinstance(proj, torch.nn.Linear) and proj.bias is not None
    ):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if getattr(config, "hidden_act", None) != "gelu":
        return False
    tokenizer = getattr(encoder.loaded.tokenizer, "tokenizer", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(encoder.loaded.tokenizer, "tokenizer_mode", "") != "":
        return False
    if getattr(encoder.loaded.tokenizer, "strip_sep_token", False):
        return False
    arrays = {
        f"w.{k}": v.detach().float().cpu().numpy()
        for k, v in transformer.state_dict().items()
        if not k.endswith("position_ids")
    }
    if isinstance(proj, torch.nn.Linear):
        arrays["proj"] = proj.weight.detach().float().cpu().numpy()
    meta = {
        "format_version": LITE_FORMAT_VERSION,
        "identity": identity,
        "layers": int(config.num_hidden_layers),
        "heads": int(config.num_attention_heads),
        "eps": float(config.layer_norm_eps),
        "pad_token_id": int(config.pad_token_id),
        "context_length": int(encoder.loaded.tokenizer.context_length),
        "tokenizer": backend.to_str(),
    }
    _write(path, meta, arrays)
    return True


def _write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """One file: magic, header length, JSON header (meta, array table), aligned float32 data."""
    table, offset = {}, 0
    for name, a in arrays.items():
        table[name] = [offset, list(a.shape)]
        offset += _aligned(a.size * 4)
    header = json.dumps({**meta, "arrays": table}).encode()
    base = _aligned(len(MAGIC) + 8 + len(header))
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            for name, a in arrays.items():
                f.seek(base + table[name][0])
                f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
            f.truncate(base + offset)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _clean(text: str) -> str:
    """open_clip's ``whitespace`` cleaning for HF tokenizers (ftfy only when it can matter)."""
    if not text.isascii():
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split())


def read_meta(path: Path) -> dict[str, Any]:
    """The header of an exported tower (identity, shapes), without reading its weights."""
    return _read(path, weights=False)[0]


def _read(path: Path, weights: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and weights; the weights are a memory map, so only the rows a query uses of the
    large token-embedding table are ever read from disk."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise ValueError("not an exported text tower")
            size = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(size))
        arrays: dict[str, np.ndarray] = {}
        if weights:
            base = _aligned(len(MAGIC) + 8 + size)
            data = np.memmap(path, dtype="<f4", mode="r")
            for name, (offset, shape) in meta.pop("arrays").items():
                start = (base + offset) // 4
                arrays[name] = data[start : start + math.prod(shape)].reshape(shape)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot read the exported text tower {path}: {e}") from e
    if meta.get("format_version") != LITE_FORMAT_VERSION:
        raise ModelError(f"{path} is an exported text tower of another format version")
    return meta, arrays


class LiteTextEncoder:
    """Embeds texts like the exported tower did: L2-normalised float32 rows (N, dim)."""

    def __init__(self, meta: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        from tokenizers import Tokenizer

        self.meta = meta
        self.identity: dict[str, Any] = meta["identity"]
        self._w = weights
        self._tokenizer = Tokenizer.from_str(meta["tokenizer"])
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(int(meta["context_length"]))

    @classmethod
    def load(cls, path: Path) -> LiteTextEncoder:
        """Read an exported tower; a missing or unreadable file raises ``ModelError``."""
        return cls(*_read(path, weights=True))

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask (B, L), padded to the longest text."""
        encoded = self._tokenizer.encode_batch([_clean(t) for t in texts])
        length = max(len(e.ids) for e in encoded)
        ids = np.full((len(encoded), length), self.meta["pad_token_id"], np.int64)
        for row, e in zip(ids, encoded, strict=True):
            row[: len(e.ids)] = e.ids
        return ids, (ids != self.meta["pad_token_id"]).astype(np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            out.append(self._encode(*self.tokenize(texts[i : i + batch_size])))
        return np.concatenate(out)

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, eps, heads = self._w, float(self.meta["eps"]), int(self.meta["heads"])
        b, length = ids.shape
        x = (
            w["w.embeddings.word_embeddings.weight"][ids]
            + w["w.embeddings.position_embeddings.weight"][:length]
            + w["w.embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(
            x, w["w.embeddings.LayerNorm.weight"], w["w.embeddings.LayerNorm.bias"], eps
        )
        width = x.shape[-1]
        head_dim = width // heads
        masked = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]

        def linear(h: np.ndarray, name: str) -> np.ndarray:
            return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

        def split(h: np.ndarray) -> np.ndarray:
            return h.reshape(b, length, heads, head_dim).transpose(0, 2, 1, 3)

        for n in range(int(self.meta["layers"])):
            p = f"w.encoder.layer.{n}"
            q, k, v = (
                split(linear(x, f"{p}.attention.self.{s}")) for s in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + masked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(b, length, width)
            x = _layer_norm(
                linear(context, f"{p}.attention.output.dense") + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                eps,
            )
            hidden = linear(x, f"{p}.intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))  # exact GELU
            x = _layer_norm(
                linear(hidden, f"{p}.output.dense") + x,
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                eps,
            )
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        if "proj" in w:
            pooled = pooled @ w["proj"].T
        norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)

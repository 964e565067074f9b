"""One factory call gives the model, its matching transforms and tokenizer; ``Encoder`` embeds.

Embeddings are L2-normalised float32 arrays of shape (N, D), so inner product is cosine similarity.
"""

from __future__ import annotations

import functools
import logging
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors import SafetensorError

from models import allocator, hubness, registry, weights
from models.errors import ModelError
from models.images import open_rgb
from models.trunks import init_from_packages

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
RANDOM_INIT_SEED = 0
# What building a model and loading its checkpoint raise for bad input. A corrupt, truncated or
# empty file can raise SafetensorError, UnpicklingError, EOFError or IndexError; weights of another
# architecture can fail open_clip's shape asserts.
_LOAD_ERRORS = (
    RuntimeError,
    ValueError,
    KeyError,
    OSError,
    SafetensorError,
    pickle.UnpicklingError,
    EOFError,
    IndexError,
    AssertionError,
)


@dataclass(frozen=True)
class Provenance:
    """What produced an embedding: enough to refuse mixing vectors from different models."""

    model: str
    pretrained: str
    weights_sha256: str
    dim: int
    image_size: int
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """The open_clip model with everything built from the same config."""

    model: torch.nn.Module
    preprocess_train: Callable[[Image.Image], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    source: weights.WeightsSource
    dim: int
    image_size: int

    @property
    def has_hf_text(self) -> bool:
        return hasattr(getattr(self.model, "text", None), "transformer")

    def trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the all-padding columns of a token batch where that changes nothing.

        HF towers mask padding, so the cut is exact and saves most of the text compute (queries
        are far shorter than the context); causal towers pool at a position, so they keep it all.
        """
        if not self.has_hf_text:
            return tokens
        used = (tokens != self.model.text.config.pad_token_id).any(dim=0).nonzero()
        return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux: /proc/cpuinfo); False when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def auto_precision(device: torch.device) -> str:
    """The faster precision on this host for our convolutional and transformer towers.

    Measured (docs/benchmarks.md): with AMX, bf16 doubles EfficientNet-Lite2 (19 -> 38 img/s);
    on an AMD EPYC host without AVX-512 or AMX, bf16 runs the depthwise convolutions 12x
    slower than fp32 (16.3 -> 1.3 img/s). So bf16 with AMX or a bf16-capable GPU, else fp32.
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx() else "fp32"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_model(
    model: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    aug_cfg: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build an architecture and load its weights (see ``weights.resolve`` for ``pretrained``).

    Random initialisation is seeded, so ``--pretrained none`` gives the same weights in every
    process. Towers that carry their own package weights (an HF text tower) still load them.
    A model for the CPU tunes the process's malloc for its batches first (``models.allocator``).
    """
    if torch.device(device).type == "cpu":
        allocator.tune()
    source = weights.resolve(model, pretrained)
    name = source.model
    if source.model_cfg is not None and (
        name not in registry.list_architectures() or registry.raw_config(name) != source.model_cfg
    ):
        registry.register_config(name, source.model_cfg)
    if open_clip.get_model_config(name) is None:
        raise ModelError(f"unknown architecture {name!r}; 'clipsearch models' lists them")
    weights.check_hub(source)
    if source.kind == "none":
        warnings.warn(
            f"{name}: no checkpoint given (--pretrained none), the model has random weights "
            "except towers initialised from their own packages; embeddings mean nothing until "
            "it is trained",
            stacklevel=2,
        )
    partial = bool(source.omitted_prefixes)
    ckpt = str(source.path) if source.kind == "file" and not partial else source.tag
    extras = registry.extras(name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net, pre_train, pre_val = open_clip.create_model_and_transforms(
                name,
                pretrained=ckpt,
                device=device,
                aug_cfg=aug_cfg,
                **extras.get("preprocess", {}),
            )
        if source.kind == "none" or partial:
            # Package trunks start every model that does not carry them in its own file.
            init_from_packages(net, extras.get("init", {}))
        if partial:
            _load_partial(net, source)
        tokenizer = open_clip.get_tokenizer(name)
    except _LOAD_ERRORS as e:
        raise ModelError(f"could not load {name} with weights {source.describe()}: {e}") from e
    dim = int(open_clip.get_model_config(name)["embed_dim"])
    return LoadedModel(net, pre_train, pre_val, tokenizer, name, source, dim, _image_size(net))


def _load_partial(net: torch.nn.Module, source: weights.WeightsSource) -> None:
    """Load a checkpoint that leaves out towers rebuilt from their packages, and nothing else."""
    result = open_clip.load_checkpoint(net, str(source.path), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(source.omitted_prefixes)]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{source.path} does not match {source.model}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


class Encoder:
    """Embeds images and texts into one space, batched and without gradients."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "auto":
            precision = auto_precision(device)
        self.loaded = loaded
        self.device = device
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # Cast the weights rather than autocast: on CPUs autocast copies dominate small batches.
        self.model = loaded.model.to(device=device, dtype=self.dtype).eval()
        # Convolutional timm trunks (depthwise convolutions above all) run faster channels-last
        # on the CPU: 12 -> 19 img/s for EfficientNet-Lite0 in fp32 (measured-facts).
        self.channels_last = device.type == "cpu" and hasattr(self.model.visual, "trunk")
        if self.channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        self.preprocess = loaded.preprocess
        self._provenance: Provenance | None = None

    @classmethod
    def load(
        cls,
        model: str | None = None,
        pretrained: str | None = None,
        device: str = "auto",
        precision: str = "auto",
    ) -> Encoder:
        """The usual entry point: ``Encoder.load("ViT-B-32", "/path/to/weights.safetensors")``."""
        dev = resolve_device(device)
        return cls(load_model(model, pretrained, device=dev), dev, precision)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def dim(self) -> int:
        return self.loaded.dim

    @property
    def image_size(self) -> int:
        return self.loaded.image_size

    @property
    def provenance(self) -> Provenance:
        if self._provenance is None:
            source = self.loaded.source
            if source.kind == "file":
                digest = weights.file_sha256(source.path)
            elif source.kind == "tag":
                digest = f"tag:{source.tag}"
            else:
                digest = f"random-init-seed{RANDOM_INIT_SEED}"
            self._provenance = Provenance(
                self.name, source.describe(), digest, self.dim, self.image_size, self.precision
            )
        return self._provenance

    @functools.cached_property
    def query_bank(self) -> hubness.QueryBank | None:
        """The hubness bank of the model directory, made with these weights (``models.hubness``)."""
        source = self.loaded.source
        directory = source.directory if source.kind == "file" else None
        return hubness.find(directory, self.provenance.weights_sha256)

    def preprocess_image(self, image: Image.Image | str | Path) -> torch.Tensor:
        """Decode (if a path) and transform one image into the model's input tensor."""
        if not isinstance(image, Image.Image):
            image = open_rgb(image, draft_size=self.image_size)
        return self.preprocess(image)

    @torch.inference_mode()
    def encode_image_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Embed an already preprocessed batch (B, 3, H, W)."""
        batch = batch.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        feats = self.model.encode_image(batch, normalize=True)
        return feats.float().cpu().numpy()

    def encode_images(
        self, images: Sequence[Image.Image | str | Path], batch_size: int = 32
    ) -> np.ndarray:
        """Embed PIL images or image paths."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            out.append(
                self.encode_image_tensor(torch.stack([self.preprocess_image(x) for x in chunk]))
            )
        return np.concatenate(out)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.loaded.trim_padding(self.loaded.tokenizer(list(texts)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed strings; long texts are truncated to the model's context length."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[i : i + batch_size]).to(self.device)
            feats = self.model.encode_text(tokens, normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out)

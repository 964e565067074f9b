"""Each tower cut in two: a frozen bottom whose outputs can be cached, and a trainable top.

``top(bottom(x))`` equals the tower's own forward (tested), so a model trained on cached bottom
outputs is an ordinary open_clip model: nothing about the cut is stored with it.

Image towers: timm EfficientNet/MobileNet-style trunks (``conv_stem``, ``bn1``, ``blocks``,
``conv_head``, ``bn2``); the top trains the last ``stages`` entries of ``blocks`` plus the head
conv, or only the projection when ``stages`` is 0. The bottom always ends before the last stage
at least, so one cache serves both the heads-only run and the one that unlocks that stage (the
frozen last stage costs a few percent of the trunk per step).

Text towers: open_clip's HF towers (a BERT-style encoder); the top is the last
``layers`` transformer layers plus pooling and projection.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from models.errors import ModelError


class ImageSplit:
    """Bottom and top of a timm image tower (``model.visual``)."""

    def __init__(self, visual: nn.Module, stages: int) -> None:
        trunk = getattr(visual, "trunk", None)
        needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")
        if trunk is None or not all(hasattr(trunk, a) for a in needed):
            raise ModelError(
                "cached-trunk training needs a timm EfficientNet-style image tower "
                "(e.g. clipsearch-base); this architecture has none"
            )
        if not 0 <= stages <= len(trunk.blocks):
            raise ModelError(f"--unlock-image-stages must be in 0..{len(trunk.blocks)}")
        self.visual, self.trunk, self.stages = visual, trunk, stages
        self.cut = len(trunk.blocks) - max(stages, 1)

    def bottom(self, images: torch.Tensor) -> torch.Tensor:
        """What the cached part computes: the feature map entering the first top stage."""
        h = self.trunk.bn1(self.trunk.conv_stem(images))
        for block in self.trunk.blocks[: self.cut]:
            h = block(h)
        return h

    def top(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings from cached bottom outputs."""
        for block in self.trunk.blocks[self.cut :]:
            h = block(h)
        h = self.trunk.forward_head(self.trunk.bn2(self.trunk.conv_head(h)))
        return self.visual.head(h)

    def trainable(self) -> list[nn.Module]:
        top = [self.visual.head]
        if self.stages:
            top += [*self.trunk.blocks[self.cut :], self.trunk.conv_head, self.trunk.bn2]
        return top

    def cached_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (of the whole CLIP model) of what the cache was computed with."""
        blocks = tuple(f"visual.trunk.blocks.{i}." for i in range(self.cut))
        return ("visual.trunk.conv_stem.", "visual.trunk.bn1.", *blocks)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (of the whole CLIP model) that training leaves as loaded."""
        if self.stages == 0:
            return ("visual.trunk.",)
        return self.cached_prefixes()


class TextSplit:
    """Bottom and top of an open_clip HF text tower (``model.text``)."""

    def __init__(self, text: nn.Module, layers: int) -> None:
        transformer = getattr(text, "transformer", None)
        encoder = getattr(transformer, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer"):
            raise ModelError("cached-trunk training needs an HF (BERT-style) text tower")
        if not 0 <= layers <= len(encoder.layer):
            raise ModelError(f"--unlock-text-layers must be in 0..{len(encoder.layer)}")
        self.text, self.transformer, self.layers = text, transformer, layers
        self.cut = len(encoder.layer) - layers

    @property
    def pad_token_id(self) -> int:
        return int(self.transformer.config.pad_token_id)

    def _mask_4d(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.transformer.config, inputs_embeds=hidden, attention_mask=mask
        )

    def _run(self, hidden: torch.Tensor, mask: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
        mask_4d = self._mask_4d(hidden, mask)
        for layer in layers:
            out = layer(hidden, mask_4d)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text.pooler(SimpleNamespace(last_hidden_state=hidden), mask)

    def bottom(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states after the frozen layers (or pooled features) and the attention mask."""
        mask = (tokens != self.pad_token_id).long()
        hidden = self.transformer.embeddings(input_ids=tokens)
        hidden = self._run(hidden, mask, self.transformer.encoder.layer[: self.cut])
        return (self.pool(hidden, mask) if self.layers == 0 else hidden), mask

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised text embeddings from cached bottom outputs."""
        if self.layers:
            hidden = self._run(hidden, mask, self.transformer.encoder.layer[self.cut :])
            hidden = self.pool(hidden, mask)
        return self.text.proj(hidden)

    def trainable(self) -> list[nn.Module]:
        return [self.text.proj, *self.transformer.encoder.layer[self.cut :]]

    def cached_prefixes(self) -> tuple[str, ...]:
        layers = tuple(f"text.transformer.encoder.layer.{i}." for i in range(self.cut))
        return ("text.transformer.embeddings.", *layers)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return (*self.cached_prefixes(), "text.transformer.pooler.")

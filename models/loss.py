"""Contrastive losses for the dual encoder: CLIP's softmax InfoNCE and SigLIP's sigmoid loss.

Both take L2-normalised features and the model's *log* temperature (``model.logit_scale``, not
its exponential: open_clip's ``CLIP.forward`` returns ``logit_scale.exp()``, which must not be
passed here). Under torch.distributed each rank gathers every rank's features and computes the
loss over the global batch, so with DDP's gradient averaging N ranks train exactly like one
process on the concatenated batch. With ``local_loss`` (open_clip's option of that name) each rank
scores only its own rows against the gathered columns: an N/R x N slice instead of N x N, whose
mean over ranks is the global loss, so the averaged gradients are the same.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.distributed import gather_features, local_rows

log = logging.getLogger(__name__)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: each image must pick its caption among all captions, and vice versa."""

    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        """Mean of image->text and text->image cross-entropy over the global batch.

        Row ``i`` of the images matches row ``i`` of the texts (labels are ``arange``).
        """
        all_images, all_texts = gather_features(image_features, text_features)
        scale = logit_scale.exp()
        labels = torch.arange(all_images.shape[0], device=all_images.device)
        if self.local_loss:
            logits_per_image = scale * image_features @ all_texts.T
            logits_per_text = scale * text_features @ all_images.T
            labels = labels[local_rows(image_features.shape[0])]
        else:
            logits_per_image = scale * all_images @ all_texts.T
            logits_per_text = logits_per_image.T
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2


class SigLipLoss(nn.Module):
    """SigLIP: an independent binary match/no-match decision for every image-caption pair.

    No softmax over the batch, so the loss needs no normalisation across rows; the learnable
    bias offsets the heavy imbalance of B positives against B*(B-1) negatives.
    """

    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        """``-sum(logsigmoid(labels * logits)) / batch``, with +1 labels on the diagonal, -1 off it.

        ``batch`` is the global number of images, as in the SigLIP paper (with ``local_loss``,
        this rank's rows over its own number of images: the mean over ranks is the same).
        """
        all_images, all_texts = gather_features(image_features, text_features)
        images = image_features if self.local_loss else all_images
        logits = logit_scale.exp() * images @ all_texts.T + logit_bias
        rows = local_rows(len(images)) if self.local_loss else slice(0, len(images))
        labels = 2 * torch.eye(len(all_texts), device=logits.device, dtype=logits.dtype)[rows] - 1
        return -F.logsigmoid(labels * logits).sum() / len(images)


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
) -> torch.Tensor:
    """InfoNCE where a text may match several images: a keyword ("dog") matches every image of
    the batch whose captions use it, so those images must not be pushed apart from it.

    ``positives`` is a (images, texts) boolean matrix with at least one True in every row and
    column; the targets are uniform over each row's (column's) positives. With the identity
    matrix (texts = images, one caption each) this is exactly ``ClipLoss`` in one process.
    """
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if positives.shape != (n_images, n_texts):
        raise ValueError(f"positives {tuple(positives.shape)} is not ({n_images}, {n_texts})")
    if not (positives.any(dim=1).all() and positives.any(dim=0).all()):
        raise ValueError("every image and every text needs at least one positive")
    logits = logit_scale.exp() * image_features @ text_features.T
    targets = positives.to(logits.dtype)
    per_image = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1)
    per_text = -(targets / targets.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0)
    return (per_image.mean() + per_text.mean()) / 2


LOSSES: dict[str, type[nn.Module]] = {"clip": ClipLoss, "siglip": SigLipLoss}


def create_loss(kind: str, local_loss: bool = False) -> nn.Module:
    """Build the loss named on the command line (``clip`` or ``siglip``)."""
    try:
        cls = LOSSES[kind]
    except KeyError:
        raise ValueError(
            f"unknown loss {kind!r}; choose one of: {', '.join(sorted(LOSSES))}"
        ) from None
    log.debug("using %s (local_loss=%s)", cls.__name__, local_loss)
    return cls(local_loss=local_loss)


def clamp_logit_scale(model: nn.Module, max_scale: float = math.log(100)) -> None:
    """Keep the learnable log-temperature in ``[0, max_scale]``; call after each optimizer step.

    Without the cap the temperature keeps growing (CLIP caps the logit multiplier at 100), which
    destabilises training. Accepts a DDP-wrapped model (uses ``model.module``).
    """
    target = model
    if not hasattr(target, "logit_scale") and hasattr(target, "module"):
        target = target.module
    scale = getattr(target, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no logit_scale parameter to clamp")
    with torch.no_grad():
        scale.clamp_(0, max_scale)

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


def keyword_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    keyword_features: torch.Tensor,
    logit_scale: torch.Tensor,
    keyword_positives: torch.Tensor,
) -> torch.Tensor:
    """CLIP InfoNCE over the image-caption pairs, plus a term for one-word texts ("dog"): each
    keyword must pick, among the batch's images, those whose captions use it (the target is
    uniform over them, so they are not pushed apart from it).

    Only keywords choose among images, never images among keywords: a keyword is a shared,
    coarse description, and letting it compete with an image's own caption costs the captions'
    specificity (measured: image→text R@1 fell 6 points). ``keyword_positives`` is
    (images, keywords) boolean, every column with a True. Single process (the cached trainer).
    """
    loss = ClipLoss()(image_features, text_features, logit_scale)
    if keyword_features.shape[0] == 0:
        return loss
    n_images, n_words = image_features.shape[0], keyword_features.shape[0]
    if keyword_positives.shape != (n_images, n_words):
        raise ValueError(
            f"keyword_positives {tuple(keyword_positives.shape)} is not ({n_images}, {n_words})"
        )
    if not keyword_positives.any(dim=0).all():
        raise ValueError("every keyword needs at least one image whose captions use it")
    logits = logit_scale.exp() * keyword_features @ image_features.T
    targets = keyword_positives.T.to(logits.dtype)
    targets = targets / targets.sum(1, keepdim=True)
    return loss - (targets * F.log_softmax(logits, dim=1)).sum(1).mean()


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

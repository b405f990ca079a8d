"""Contrastive losses: symmetric softmax InfoNCE (CLIP) and sigmoid (SigLIP)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over ``exp(t) * img @ txt.T``.

    ``logit_scale`` is the log-temperature t; it is clamped at ln 100 as in CLIP.
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sigmoid_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP: every pair is a binary problem; positives on the diagonal. Normalised by B."""
    logits = logit_scale.exp() * img @ txt.T + logit_bias
    signs = 2 * torch.eye(img.shape[0], device=img.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / img.shape[0]

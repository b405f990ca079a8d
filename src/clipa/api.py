"""OpenCLIP's front door, for code written against ``open_clip``: ``create_model_and_transforms``
and ``tokenize`` (``list_models`` and ``get_tokenizer`` live beside them in ``clipa``).

The transforms are OpenCLIP's defaults for a plain model: for training a random resized crop
of 90-100% of the area (bicubic), for evaluation a bicubic resize of the short side and a
centre crop; both then CLIP's mean and std. The model comes back in training mode, as
OpenCLIP's does: call ``model.eval()`` before encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from .config import DataConfig
from .data import CLIP_MEAN, CLIP_STD
from .data.transforms import build_eval_transform, build_train_transform
from .hub import build, resolve
from .models import CLIP

OPENCLIP_TRAIN_SCALE = (0.9, 1.0)  # open_clip.AugmentationCfg's default crop area range


def image_transforms(image_size: int) -> tuple[v2.Compose, v2.Compose]:
    """(training, evaluation) transforms, PIL image -> normalised ``[3, S, S]`` float tensor."""
    train = build_train_transform(image_size, DataConfig(scale=OPENCLIP_TRAIN_SCALE))
    return train, build_eval_transform(image_size)


# OpenCLIP's preprocess_cfg for plain CLIP models: what the transforms here do.
_PLAIN = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def create_model_and_transforms(name: str, pretrained: str | Path | None = None, *, revision: str | None = None,
                                cache_dir: str | Path | None = None,
                                **overrides: Any) -> tuple[CLIP, v2.Compose, v2.Compose]:
    """``(model, train transform, eval transform)`` as ``open_clip.create_model_and_transforms``;
    the arguments are :func:`clipa.create_model`'s and the transforms follow the model's image size.
    A hub model whose ``preprocess_cfg`` asks for other preprocessing is refused, not served wrongly."""
    resolved = resolve(name, pretrained, revision=revision, cache_dir=cache_dir, **overrides)
    other = {k: v for k, v in resolved.preprocess.items() if k in _PLAIN and _differs(v, _PLAIN[k])}
    if other:
        raise ValueError(f"{name}: its preprocess_cfg asks for {other}; clipa's transforms do "
                         f"{ {k: _PLAIN[k] for k in other} } (use clipa.create_model and your own transforms)")
    model = build(resolved)
    return (model, *image_transforms(model.visual.image_size))


def _differs(value: Any, plain: Any) -> bool:
    if isinstance(plain, list):
        return len(value) != len(plain) or any(abs(float(a) - b) > 1e-6 for a, b in zip(value, plain))
    return value != plain


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
    """``open_clip.tokenize``: OpenAI CLIP's BPE, ``[B, context_length]`` (start, ids, end, zeros)."""
    from .tokenizer import clip_tokenizer

    return clip_tokenizer(context_length)(texts)

"""Named model configs (OpenCLIP's names) as keyword data, timm style, and the two ways a state
dict meets a model: the weights follow the model's sizes (``adapt_state_dict``, for pretrained
weights) or the model follows the weights' (``load_weights``, for its own trained ones)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..config import ModelConfig, TextConfig, VisionConfig, from_dict, merge, to_dict, validate_model
from .clip import CLIP
from .pos_embed import resample_1d, resample_grid

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}


def register(name: str) -> Callable:
    def deco(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _REGISTRY[name] = fn
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _openclip(embed, image, patch, vw, vl, vhw, tw, th, tl, mlp=4.0) -> ModelConfig:
    return ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=image, patch_size=patch, width=vw, layers=vl,
                            head_width=vhw, mlp_ratio=mlp),
        text=TextConfig(width=tw, heads=th, layers=tl),
    )


def _clipa(cfg: ModelConfig) -> ModelConfig:
    """CLIPA's towers: no pre-LN, mean-pooled patches with LN after pooling, bidirectional
    text pooled at the last position, BERT WordPiece tokens, context 32."""
    v = dataclasses.replace(cfg.vision, ln_pre=False, pool="avg", final_ln_after_pool=True)
    t = dataclasses.replace(cfg.text, context_length=32, vocab_size=32000, causal=False,
                            pool="last", tokenizer="bert")
    return dataclasses.replace(cfg, vision=v, text=t)


def _quickgelu(cfg: ModelConfig) -> ModelConfig:
    """OpenCLIP's ``-quickgelu`` models: OpenAI's (and MetaCLIP's, DFN's) weights were trained with it."""
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, act="quick_gelu"),
                               text=dataclasses.replace(cfg.text, act="quick_gelu"))


_BASE = {  # name: (embed, patch, vision width, layers, head width, text width, heads, layers, mlp)
    "ViT-S-16": (384, 16, 384, 12, 64, 384, 6, 12, 4.0),
    "ViT-B-32": (512, 32, 768, 12, 64, 512, 8, 12, 4.0),
    "ViT-B-16": (512, 16, 768, 12, 64, 512, 8, 12, 4.0),
    "ViT-L-14": (768, 14, 1024, 24, 64, 768, 12, 12, 4.0),
    "ViT-L-16": (768, 16, 1024, 24, 64, 768, 12, 12, 4.0),
    "ViT-H-14": (1024, 14, 1280, 32, 80, 1024, 16, 24, 4.0),
    "ViT-bigG-14": (1280, 14, 1664, 48, 104, 1280, 20, 32, 4.9231),
}

for _name, (e, p, vw, vl, vhw, tw, th, tl, mlp) in _BASE.items():
    def _make(e=e, p=p, vw=vw, vl=vl, vhw=vhw, tw=tw, th=th, tl=tl, mlp=mlp, size=224):
        return _openclip(e, size, p, vw, vl, vhw, tw, th, tl, mlp)
    register(_name)(_make)
    if _name not in ("ViT-S-16", "ViT-L-16"):  # the names OpenCLIP has a -quickgelu config for
        register(f"{_name}-quickgelu")(lambda m=_make: _quickgelu(m()))
    if _name in ("ViT-L-14", "ViT-H-14", "ViT-bigG-14"):
        register(f"{_name}-CLIPA")(lambda m=_make: _clipa(m()))
        register(f"{_name}-CLIPA-336")(lambda m=_make: _clipa(m(size=336)))


@register("clipa-tiny")
def _tiny() -> ModelConfig:
    """The built-in demo model: small enough to train on two CPU cores in a minute or two."""
    return ModelConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=32, patch_size=4, width=128, layers=3, head_width=32),
        text=TextConfig(context_length=16, width=128, heads=4, layers=3),
    )


@register("clipa-tiny-clipa")
def _tiny_clipa() -> ModelConfig:
    """The demo size with CLIPA's tower choices (and the CLIP BPE, which needs no files)."""
    cfg = _clipa(_tiny())
    cfg.vision.pos_embed = "sincos"
    cfg.text = dataclasses.replace(cfg.text, vocab_size=49408, tokenizer="clip", context_length=16)
    return cfg


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registry config ``name`` with nested overrides, e.g. ``vision={"layers": 2}``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    tree = merge(to_dict(_REGISTRY[name]()), overrides)
    cfg = from_dict(ModelConfig, tree, prefix="model.")
    validate_model(cfg)
    return cfg


def adapt_state_dict(sd: dict[str, torch.Tensor], model: CLIP) -> dict[str, torch.Tensor]:
    """Resize position tables to the model's grid and context (bicubic / linear), as OpenCLIP's
    ``load_checkpoint`` does."""
    sd = dict(sd)
    key = "visual.positional_embedding"
    own = model.visual.positional_embedding
    if key in sd and sd[key].shape != own.shape:
        if model.visual.cfg.pos_embed == "sincos":
            sd[key] = own.detach().clone()
        else:
            g = model.visual.cfg.grid_size
            sd[key] = resample_grid(sd[key], (g, g), antialias=True)  # as OpenCLIP loads weights
    if "positional_embedding" in sd and sd["positional_embedding"].shape != model.positional_embedding.shape:
        sd["positional_embedding"] = resample_1d(sd["positional_embedding"], model.context_length)
    return sd


def load_strict(model: CLIP, sd: dict[str, torch.Tensor], source: object):
    """``model.load_state_dict(sd, strict=True)`` (its result: no missing or unexpected keys), its
    mismatch one line naming ``source``, the counts and the first few keys (a file of a million
    stray keys is not printed whole)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (model {list(own[k].shape)})" for k in own
              if k in sd and hasattr(sd[k], "shape") and sd[k].shape != own[k].shape]
    problems = [f"{len(keys)} {what} ({', '.join(str(k)[:80] for k in keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for what, keys in (("unexpected keys", unexpected), ("missing keys", missing),
                                   ("shapes that differ", shapes)) if keys]
    if problems:
        raise ValueError(f"{source} does not hold this model's weights: {'; '.join(problems)}")
    return model.load_state_dict(sd, strict=True)


def load_weights(model: CLIP, sd: dict[str, torch.Tensor], source: object = "the weights") -> None:
    """Move a model to the image grid and text length the weights were saved at, then load
    them (strict): the converse of ``adapt_state_dict``, for a model's own trained weights."""
    for key in ("visual.positional_embedding", "positional_embedding"):
        if key not in sd:
            raise ValueError(f"{source} does not hold this model's weights: it has no {key}")
    g = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    size = g * model.visual.cfg.patch_size
    if size != model.visual.image_size:
        model.visual.set_image_size(size)
    if sd["positional_embedding"].shape[0] != model.context_length:
        model.set_context_length(sd["positional_embedding"].shape[0])
    load_strict(model, sd, source)

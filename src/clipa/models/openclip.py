"""OpenCLIP's model config, read and written by one table (torchtitan's ``state_dict_adapter``).

An OpenCLIP model folder (a hub repository, a ``local-dir:``, ``clipa export``'s output) holds
``open_clip_config.json`` (``model_cfg``: the towers; ``preprocess_cfg``: the pixels) beside
the weights. The weights need no mapping: clipa's parameter names are OpenCLIP's. The config
does: :data:`VISION`, :data:`TEXT` and :data:`TOP` pair each OpenCLIP key with clipa's field,
and :func:`to_openclip` and :func:`from_openclip` both read them, so what clipa writes is
exactly what it reads back. Keys that build nothing clipa lacks at their plain value are
accepted on reading (``*_INERT``); any other setting is refused, naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, ModelConfig, PreprocessConfig, from_dict, validate_model
from ..hubfile import DEFAULT_BERT

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # OpenCLIP's order; clipa writes the first


@dataclass(frozen=True)
class Key:
    """One OpenCLIP key and the clipa field it holds; ``values`` maps clipa's values to
    OpenCLIP's (None: the same value), ``negate`` flips a boolean (``no_ln_pre`` is ``not ln_pre``)."""

    theirs: str
    ours: str
    values: dict[Any, Any] | None = None
    negate: bool = False

    def write(self, value: Any) -> Any:
        if self.negate:
            return not value
        return value if self.values is None else self.values[value]

    def read(self, value: Any, section: str) -> Any:
        if self.negate:
            return not value
        if self.values is None:
            return value
        back = {v: k for k, v in self.values.items()}
        if value not in back:
            raise ConfigError(f"unsupported setting {section}.{self.theirs}={value!r} (clipa builds "
                              f"{', '.join(map(repr, back))})")
        return back[value]


_SHARED = (Key("width", "width"), Key("layers", "layers"), Key("mlp_ratio", "mlp_ratio"))
VISION = (Key("image_size", "image_size"), Key("patch_size", "patch_size"), *_SHARED,
          Key("head_width", "head_width"), Key("no_ln_pre", "ln_pre", negate=True),
          Key("pool_type", "pool", {"tok": "tok", "avg": "avg"}),
          Key("final_ln_after_pool", "final_ln_after_pool"),
          Key("pos_embed_type", "pos_embed", {"learned": "learnable", "sincos": "sin_cos_2d"}))
TEXT = (Key("context_length", "context_length"), Key("vocab_size", "vocab_size"), *_SHARED, Key("heads", "heads"),
        Key("no_causal_mask", "causal", negate=True),
        Key("pool_type", "pool", {"argmax": "argmax", "last": "last", "first": "first"}))
TOP = (Key("embed_dim", "embed_dim"), Key("init_logit_scale", "init_logit_scale"))
PREPROCESS = (Key("mean", "mean"), Key("std", "std"), Key("interpolation", "interpolation"),
              Key("resize_mode", "resize_mode"))

# What OpenCLIP's ViT / text dataclasses hold at the values that add nothing clipa lacks
# (``...``: any value is accepted, for settings that do not change the trained model).
_BLOCK_INERT = {"ls_init_value": None, "output_tokens": False, "norm_kwargs": None, "block_type": None,
                "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                "scale_attn": False, "scale_fc": False, "act_kwargs": ...}
VISION_INERT = {**_BLOCK_INERT, "attentional_pool": False, "timm_model_name": None,
                "patch_dropout": ...,  # a training-time drop; clipa's token reduction is set per stage
                **dict.fromkeys(("attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
                                 "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"), ...)}
TEXT_INERT = {**_BLOCK_INERT, "embed_cls": False, "tokenizer_mode": None, "hf_model_name": None,
              "proj_type": "linear", "proj_bias": False, "tokenizer_kwargs": ..., "hf_tokenizer_name": ...,
              # LayerNorm acts per token, so before or after picking one token is the same
              "final_ln_after_pool": ...,
              **dict.fromkeys(("pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"), ...)}
TOP_INERT = {"vision_cfg": ..., "text_cfg": ..., "quick_gelu": ..., "custom_text": False,
             "nonscalar_logit_scale": False, "multimodal_cfg": None,
             "init_logit_bias": ...,  # read below: whether the model has a bias (written: the trained one)
             "cast_dtype": ...}  # clipa loads weights in fp32 and casts by its precision setting
PREPROCESS_INERT = {"size": ..., "mode": "RGB", "fill_color": 0}


# ----------------------------------------------------------------------------- clipa -> OpenCLIP


def _act_kwargs(act: str) -> dict:
    return {"act_kwargs": {"approximate": "tanh"}} if act == "gelu_tanh" else {}


def to_openclip(cfg: ModelConfig, logit_bias: float | None = None) -> dict:
    """``open_clip_config.json``'s content for a model of ``cfg`` (at ``cfg``'s sizes: give the
    model's current ones, ``CLIP.current_config()``); ``logit_bias`` is the trained bias."""
    v, t = cfg.vision, cfg.text
    if (v.act == "quick_gelu") != (t.act == "quick_gelu"):
        raise ConfigError(f"OpenCLIP cannot mix QuickGELU with GELU across towers (vision {v.act}, text {t.act})")
    vision = {k.theirs: k.write(getattr(v, k.ours)) for k in VISION} | _act_kwargs(v.act)
    text = {k.theirs: k.write(getattr(t, k.ours)) for k in TEXT} | _act_kwargs(t.act)
    if t.tokenizer == "bert":  # OpenCLIP's CLIPA configs; a local folder works as the name too
        text.update(hf_tokenizer_name=t.tokenizer_path or DEFAULT_BERT, tokenizer_kwargs={"strip_sep_token": True})
    model_cfg = {k.theirs: k.write(getattr(cfg, k.ours)) for k in TOP}
    if v.act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    model_cfg.update(vision_cfg=vision, text_cfg=text)
    if logit_bias is not None:
        model_cfg["init_logit_bias"] = logit_bias
    p = cfg.preprocess
    preprocess = {"size": v.image_size, "mode": "RGB", "fill_color": 0}
    preprocess |= {k.theirs: list(k.write(getattr(p, k.ours))) if isinstance(getattr(p, k.ours), tuple)
                   else k.write(getattr(p, k.ours)) for k in PREPROCESS}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


# ----------------------------------------------------------------------------- OpenCLIP -> clipa


def _read(section: str, values: dict, keys: tuple[Key, ...], inert: dict) -> dict:
    """One OpenCLIP section as clipa fields by ``keys``; ``inert`` keys are accepted at their
    plain value (or any value for ``...``), anything else is an unsupported setting."""
    if not isinstance(values, dict):
        raise ConfigError(f"unsupported setting {section}={values!r} (expected a mapping)")
    by_name = {k.theirs: k for k in keys}
    out = {}
    for name, value in values.items():
        if name in by_name:
            out[by_name[name].ours] = by_name[name].read(value, section)
        elif name not in inert:
            raise ConfigError(f"unsupported setting {section}.{name}={value!r} (not a field clipa builds)")
        elif inert[name] is not ... and value is not None and value != inert[name]:
            raise ConfigError(f"unsupported setting {section}.{name}={value!r} (clipa builds OpenCLIP's plain "
                              f"ViT towers; it needs {inert[name]!r})")
    return out


def _act(section: str, kwargs: dict | None, quick_gelu: bool) -> str:
    if quick_gelu:
        return "quick_gelu"
    if not kwargs:
        return "gelu"
    if kwargs == {"approximate": "tanh"}:
        return "gelu_tanh"
    raise ConfigError(f"unsupported setting {section}.act_kwargs={kwargs!r}")


def from_openclip(config: dict, where: str = CONFIG_FILE) -> ModelConfig:
    """A clipa ``ModelConfig`` from ``open_clip_config.json``'s content (``model_cfg`` and, when
    present, ``preprocess_cfg``). A setting that would build something clipa's towers lack
    fails with ``ConfigError`` naming it (``vision_cfg.timm_model_name``, ...); ``where``
    names the file in the messages."""
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{where}: has no model_cfg mapping")
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if isinstance(vision_cfg, dict) and isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(f"unsupported setting vision_cfg.layers={vision_cfg['layers']!r} (a ResNet; clipa "
                          "builds ViT towers only)")
    top = _read("model_cfg", model_cfg, TOP, TOP_INERT)
    vision = _read("vision_cfg", vision_cfg, VISION, VISION_INERT)
    text = _read("text_cfg", text_cfg, TEXT, TEXT_INERT)
    quick = bool(model_cfg.get("quick_gelu"))
    vision["act"] = _act("vision_cfg", vision_cfg.get("act_kwargs"), quick)
    text["act"] = _act("text_cfg", text_cfg.get("act_kwargs"), quick)
    if text_cfg.get("hf_tokenizer_name"):
        if text_cfg.get("tokenizer_kwargs") != {"strip_sep_token": True}:
            raise ConfigError(f"unsupported setting text_cfg.tokenizer_kwargs={text_cfg.get('tokenizer_kwargs')!r} "
                              "(clipa's BERT tokenizer is OpenCLIP's HFTokenizer with strip_sep_token=True)")
        text["tokenizer"] = "bert"
        # the default stays unnamed, so $CLIPA_BERT_TOKENIZER still wins
        text["tokenizer_path"] = None if text_cfg["hf_tokenizer_name"] == DEFAULT_BERT else text_cfg["hf_tokenizer_name"]
    if model_cfg.get("init_logit_bias") is not None:
        top["init_logit_bias"] = model_cfg["init_logit_bias"]
    preprocess = _read("preprocess_cfg", config.get("preprocess_cfg") or {}, PREPROCESS, PREPROCESS_INERT)
    cfg = from_dict(ModelConfig, {**top, "vision": vision, "text": text, "preprocess": preprocess}, prefix="model.")
    validate_model(cfg)
    return cfg


def read_preprocess(preprocess: PreprocessConfig, preprocess_cfg: dict, where: str) -> PreprocessConfig:
    """``preprocess`` with an OpenCLIP ``preprocess_cfg`` read over it (``size`` is the tower's,
    not read; another ``mode`` or ``fill_color``, or an unknown key, is refused, naming it)."""
    fields = _read(f"{where} preprocess_cfg", preprocess_cfg, PREPROCESS, PREPROCESS_INERT)
    return from_dict(PreprocessConfig, {**dataclasses.asdict(preprocess), **fields}, prefix="model.preprocess.")


def with_preprocess(cfg: ModelConfig, preprocess_cfg: dict, where: str) -> ModelConfig:
    """``cfg`` with an OpenCLIP ``preprocess_cfg`` (a pretrained tag's) read over its own."""
    return dataclasses.replace(cfg, preprocess=read_preprocess(cfg.preprocess, preprocess_cfg, where))

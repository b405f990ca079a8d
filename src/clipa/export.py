"""Write a model for other libraries to load unchanged.

- ``openclip``: a folder with ``open_clip_config.json`` (OpenCLIP's ``model_cfg`` and
  ``preprocess_cfg``) and ``open_clip_model.safetensors`` (the state dict, already in OpenCLIP's
  layout). Load it with ``open_clip.create_model_and_transforms("local-dir:DIR")`` and
  ``open_clip.get_tokenizer("local-dir:DIR")``; CLIP_benchmark takes the same name. When the
  config equals a built-in OpenCLIP one, ``create_model_and_transforms(NAME, pretrained=FILE)``
  also works.
- ``hf``: a ``transformers`` ``CLIPModel`` folder (config, safetensors weights, CLIP tokenizer and
  image processor) for OpenAI-style towers; other configs fail with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .data import CLIP_MEAN, CLIP_STD

FORMATS = ("openclip", "hf")
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}


class ExportError(ValueError):
    """The model cannot be written in the requested format."""


def _state_dict(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- OpenCLIP


def _act_fields(vision_act: str, text_act: str) -> tuple[dict, dict, dict]:
    """OpenCLIP has one ``quick_gelu`` switch for both towers and per-tower GELU kwargs."""
    if (vision_act == "quick_gelu") != (text_act == "quick_gelu"):
        raise ExportError(f"OpenCLIP cannot mix QuickGELU with GELU across towers (vision {vision_act}, "
                          f"text {text_act})")
    def tower(act: str) -> dict:
        return {"act_kwargs": {"approximate": "tanh"}} if act == "gelu_tanh" else {}

    top = {"quick_gelu": True} if vision_act == "quick_gelu" else {}
    return top, tower(vision_act), tower(text_act)


def openclip_config(model: Any) -> dict:
    """OpenCLIP's ``open_clip_config.json`` content for a clipa model at its current sizes."""
    cfg, v, t = model.cfg, model.cfg.vision, model.cfg.text
    top, vision_act, text_act = _act_fields(v.act, t.act)
    vision = {"image_size": model.visual.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
              "head_width": v.head_width, "mlp_ratio": v.mlp_ratio, "no_ln_pre": not v.ln_pre,
              "pool_type": v.pool, "final_ln_after_pool": v.final_ln_after_pool,
              "pos_embed_type": "sin_cos_2d" if v.pos_embed == "sincos" else "learnable", **vision_act}
    text = {"context_length": model.context_length, "vocab_size": t.vocab_size, "width": t.width,
            "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio, "no_causal_mask": not t.causal,
            "pool_type": t.pool, **text_act}
    if t.tokenizer == "bert":  # OpenCLIP's CLIPA configs; a local folder works as the name too
        text.update(hf_tokenizer_name=t.tokenizer_path or "bert-base-uncased",
                    tokenizer_kwargs={"strip_sep_token": True})
    model_cfg = {"embed_dim": cfg.embed_dim, **top, "vision_cfg": vision, "text_cfg": text}
    if getattr(model, "logit_bias", None) is not None:
        model_cfg["init_logit_bias"] = model.logit_bias.item()
    preprocess = {"size": model.visual.image_size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def export_openclip(model: Any, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(openclip_config(model), indent=2) + "\n")
    save_file(_state_dict(model), str(out / "open_clip_model.safetensors"))
    return out


# ----------------------------------------------------------------------------- Hugging Face


def hf_unsupported(model: Any) -> list[str]:
    """Why ``transformers.CLIPModel`` cannot hold this model (empty when it can)."""
    v, t = model.cfg.vision, model.cfg.text
    reasons = []
    if v.pool != "tok":
        reasons.append(f"vision pool {v.pool!r} (CLIPModel pools the class token)")
    if not v.ln_pre:
        reasons.append("no pre-LayerNorm in the image tower (CLIPModel always has pre_layrnorm)")
    if not t.causal:
        reasons.append("bidirectional text attention (CLIPModel's text tower is causal)")
    if t.pool != "argmax":
        reasons.append(f"text pool {t.pool!r} (CLIPModel pools the end-of-text token)")
    if t.tokenizer != "clip":
        reasons.append(f"{t.tokenizer!r} tokenizer (CLIPModel pairs with the CLIP BPE tokenizer)")
    if getattr(model, "logit_bias", None) is not None:
        reasons.append("a logit bias (sigmoid loss; CLIPModel has none)")
    return reasons


def hf_config(model: Any):
    from transformers import CLIPConfig

    v, t, e = model.cfg.vision, model.cfg.text, model.cfg.embed_dim
    text = {"vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": model.context_length, "hidden_act": _HF_ACT[t.act],
            "layer_norm_eps": 1e-5, "projection_dim": e, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 0}
    vision = {"hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
              "num_hidden_layers": v.layers, "num_attention_heads": v.heads, "image_size": model.visual.image_size,
              "patch_size": v.patch_size, "hidden_act": _HF_ACT[v.act], "layer_norm_eps": 1e-5,
              "projection_dim": e, "num_channels": 3}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=e,
                      logit_scale_init_value=model.logit_scale.item())


def _hf_blocks(sd: dict, src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}.resblocks.{i}", f"{dst}.layers.{i}"
        for name, w, b in zip("qkv", sd[f"{s}.attn.in_proj_weight"].chunk(3), sd[f"{s}.attn.in_proj_bias"].chunk(3)):
            out[f"{d}.self_attn.{name}_proj.weight"], out[f"{d}.self_attn.{name}_proj.bias"] = w, b
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{d}.{theirs}.{p}"] = sd[f"{s}.{ours}.{p}"]
    return out


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """clipa (OpenCLIP layout) -> ``transformers.CLIPModel`` parameter names."""
    sd = _state_dict(model)
    out = {
        "logit_scale": sd["logit_scale"],
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T.contiguous(),
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T.contiguous(),
    }
    out.update(_hf_blocks(sd, "transformer", "text_model.encoder", model.cfg.text.layers))
    out.update(_hf_blocks(sd, "visual.transformer", "vision_model.encoder", model.cfg.vision.layers))
    return {k: v.contiguous() for k, v in out.items()}


def _hf_processor(model: Any, out: Path):
    """CLIP tokenizer files (from clipa's own BPE) and OpenCLIP's evaluation preprocessing."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    from .tokenizer import tokenizer_for

    tok = tokenizer_for(model)
    spec = json.loads(tok.backend.to_str())["model"]
    vocab = dict(spec["vocab"])  # OpenCLIP's names of the two special tokens -> Hugging Face's
    vocab = {k: i for k, i in vocab.items() if i not in (tok.sot_token_id, tok.eot_token_id)}
    vocab.update({"<|startoftext|>": tok.sot_token_id, "<|endoftext|>": tok.eot_token_id})
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    # Pads with end-of-text (as OpenAI's hub tokenizer; OpenCLIP pads with 0): the causal text
    # tower pools the first end-of-text, so padding never changes an embedding.
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=model.context_length)
    size = model.visual.image_size
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def export_hf(model: Any, out_dir: str | Path) -> Path:
    reasons = hf_unsupported(model)
    if reasons:
        raise ExportError("transformers' CLIPModel cannot represent this model: " + "; ".join(reasons)
                          + ". Use --format openclip instead.")
    from transformers import CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = CLIPModel(hf_config(model))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ExportError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    hf.save_pretrained(out)
    _hf_processor(model, out).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- either format


def export(model: Any, out_dir: str | Path, fmt: str) -> Path:
    if fmt == "openclip":
        return export_openclip(model, out_dir)
    if fmt == "hf":
        return export_hf(model, out_dir)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")

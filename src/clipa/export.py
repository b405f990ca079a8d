"""Write a model for other libraries to load unchanged.

- ``openclip``: a folder with ``open_clip_config.json`` (OpenCLIP's ``model_cfg`` and
  ``preprocess_cfg``, written by ``models.openclip``'s table: the model's own preprocessing) and
  ``open_clip_model.safetensors`` (the state dict, already in OpenCLIP's layout). Load it with ``open_clip.create_model_and_transforms("local-dir:DIR")`` and
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

from .files import save_tensors
from .models.openclip import CONFIG_FILE, WEIGHTS_FILES, to_openclip

FORMATS = ("openclip", "hf")
_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


class ExportError(ValueError):
    """The model cannot be written in the requested format."""


def _state_dict(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- OpenCLIP


def openclip_config(model: Any, tokenizer_name: str | None = None) -> dict:
    """OpenCLIP's ``open_clip_config.json`` content for a clipa model at its current sizes, with
    its trained logit bias; ``tokenizer_name`` replaces the BERT tokenizer's name (a hub id for
    a tokenizer that lives in a local folder)."""
    bias = getattr(model, "logit_bias", None)
    config = to_openclip(model.current_config(), None if bias is None else bias.item())
    if tokenizer_name is not None:
        config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = tokenizer_name
    return config


def export_openclip(model: Any, out_dir: str | Path, tokenizer_name: str | None = None) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(openclip_config(model, tokenizer_name), indent=2) + "\n")
    save_tensors(_state_dict(model), out / WEIGHTS_FILES[0])
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
    if model.cfg.preprocess.resize_mode == "longest":
        reasons.append("resize_mode 'longest' (CLIPImageProcessor resizes the short side or both)")
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
    """CLIP tokenizer files (from clipa's own BPE) and the model's evaluation preprocessing."""
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
    size, pre = model.visual.image_size, model.cfg.preprocess
    square = {"height": size, "width": size}
    resize = {"size": square, "do_center_crop": False} if pre.resize_mode == "squash" else \
        {"size": {"shortest_edge": size}, "crop_size": square}
    images = CLIPImageProcessor(**resize, image_mean=list(pre.mean), image_std=list(pre.std),
                                resample=_PIL_RESAMPLE[pre.interpolation])
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

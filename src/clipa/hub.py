"""Pretrained weights by name, and the way back to the hub.

Three kinds of name, resolved the way OpenCLIP 3.3.0 resolves them:

- ``create_model("ViT-H-14-CLIPA-336", pretrained="datacomp1b")``: an OpenCLIP pretrained tag,
  looked up in ``PRETRAINED`` (hub repository per model and tag; the weights file is the
  repository's ``open_clip_model.safetensors``, else ``open_clip_pytorch_model.bin``).
- ``create_model("hf-hub:ORG/REPO[@REVISION]")``: a repository in OpenCLIP's hub layout; its
  ``open_clip_config.json`` gives the towers (``model_cfg``), the preprocessing and the
  tokenizer (``text_cfg.hf_tokenizer_name`` for BERT WordPiece text). ``local-dir:DIR`` (or
  ``hf-hub:DIR``) reads the same files from a folder.
- ``create_model(NAME, pretrained="hf-hub:ORG/REPO")``: a registry model with a repository's weights.

Downloads go through ``huggingface_hub`` (``clipa.hubfile``). ``save_pretrained`` and
``push_to_hub`` write the same layout from a clipa model, so OpenCLIP loads it back.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import load_model, load_pretrained
from .config import ConfigError, ModelConfig, RunConfig, from_dict, merge, to_dict, validate_model
from .hubfile import DEFAULT_BERT, HubError, fetch, split_revision
from .models import CLIP, get_model_config

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # OpenCLIP's order
SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class Tag:
    """Where OpenCLIP keeps one pretrained tag's weights."""

    repo: str
    quick_gelu: bool = False  # trained with QuickGELU (OpenAI's weights): the model must use it


def _table() -> dict[tuple[str, str], Tag]:
    openai = {"ViT-B-32": "timm/vit_base_patch32_clip_224.openai",
              "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
              "ViT-L-14": "timm/vit_large_patch14_clip_224.openai"}
    clipa = {("ViT-L-14-CLIPA", "datacomp1b"): "ViT-L-14-CLIPA-datacomp1B",
             ("ViT-L-14-CLIPA-336", "datacomp1b"): "ViT-L-14-CLIPA-336-datacomp1B",
             ("ViT-H-14-CLIPA", "datacomp1b"): "ViT-H-14-CLIPA-datacomp1B",
             ("ViT-H-14-CLIPA-336", "laion2b"): "ViT-H-14-CLIPA-336-laion2B",
             ("ViT-H-14-CLIPA-336", "datacomp1b"): "ViT-H-14-CLIPA-336-datacomp1B",
             ("ViT-bigG-14-CLIPA", "datacomp1b"): "ViT-bigG-14-CLIPA-datacomp1B",
             ("ViT-bigG-14-CLIPA-336", "datacomp1b"): "ViT-bigG-14-CLIPA-336-datacomp1B"}
    laion = {("ViT-B-32", "laion2b_s34b_b79k"): "CLIP-ViT-B-32-laion2B-s34B-b79K",
             ("ViT-B-32", "datacomp_xl_s13b_b90k"): "CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
             ("ViT-B-16", "laion2b_s34b_b88k"): "CLIP-ViT-B-16-laion2B-s34B-b88K",
             ("ViT-B-16", "datacomp_xl_s13b_b90k"): "CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
             ("ViT-L-14", "laion2b_s32b_b82k"): "CLIP-ViT-L-14-laion2B-s32B-b82K",
             ("ViT-L-14", "datacomp_xl_s13b_b90k"): "CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
             ("ViT-H-14", "laion2b_s32b_b79k"): "CLIP-ViT-H-14-laion2B-s32B-b79K",
             ("ViT-bigG-14", "laion2b_s39b_b160k"): "CLIP-ViT-bigG-14-laion2B-39B-b160k"}
    table = {key: Tag(f"UCSC-VLAA/{repo}") for key, repo in clipa.items()}
    table.update({key: Tag(f"laion/{repo}") for key, repo in laion.items()})
    for model, repo in openai.items():  # OpenCLIP lists the tag under both names; it is QuickGELU either way
        table[(model, "openai")] = table[(f"{model}-quickgelu", "openai")] = Tag(repo, quick_gelu=True)
    return table


PRETRAINED: dict[tuple[str, str], Tag] = _table()


def list_pretrained() -> list[tuple[str, str]]:
    """``(model, tag)`` pairs ``create_model(model, pretrained=tag)`` resolves, as ``open_clip.list_pretrained``."""
    return sorted(PRETRAINED)


def pretrained_tags(model: str) -> list[str]:
    return sorted(tag for name, tag in PRETRAINED if name == model)


# ----------------------------------------------------------------------------- OpenCLIP config -> clipa


def _mapped(section: str, cfg: dict, rules: dict, inert: dict) -> dict:
    """Translate one OpenCLIP config section by ``rules`` (key -> clipa key, or (key, convert));
    keys in ``inert`` are accepted at the value that builds nothing extra, or any value for ``...``."""
    out = {}
    for key, value in cfg.items():
        if key in rules:
            ours, convert = rules[key] if isinstance(rules[key], tuple) else (rules[key], None)
            if isinstance(convert, dict):
                if value not in convert:
                    raise ConfigError(f"unsupported setting {section}.{key}={value!r} (clipa builds "
                                      f"{', '.join(map(repr, convert))})")
                value = convert[value]
            out[ours] = convert(value) if callable(convert) else value
        elif key in inert and inert[key] is not ... and value != inert[key] and value is not None:
            raise ConfigError(f"unsupported setting {section}.{key}={value!r} (clipa builds OpenCLIP's plain "
                              f"ViT towers; it needs {inert[key]!r})")
        elif key not in inert:
            raise ConfigError(f"unsupported setting {section}.{key}={value!r} (not a field clipa builds)")
    return out


def _act(section: str, kwargs: dict | None) -> str:
    if not kwargs:
        return "gelu"
    if kwargs == {"approximate": "tanh"}:
        return "gelu_tanh"
    raise ConfigError(f"unsupported setting {section}.act_kwargs={kwargs!r}")


_SHARED = {"width": "width", "layers": "layers", "mlp_ratio": "mlp_ratio"}
_VISION = {**_SHARED, "image_size": "image_size", "patch_size": "patch_size", "head_width": "head_width",
           "final_ln_after_pool": "final_ln_after_pool", "no_ln_pre": ("ln_pre", lambda v: not v),
           "pool_type": ("pool", {"tok": "tok", "avg": "avg"}),
           "pos_embed_type": ("pos_embed", {"learnable": "learned", "sin_cos_2d": "sincos"})}
_TEXT = {**_SHARED, "context_length": "context_length", "vocab_size": "vocab_size", "heads": "heads",
         "no_causal_mask": ("causal", lambda v: not v),
         "pool_type": ("pool", {"argmax": "argmax", "last": "last", "first": "first"}),
         "hf_tokenizer_name": "tokenizer_path"}
# What OpenCLIP's ViT / text dataclasses hold at the values that add nothing clipa lacks.
_BLOCK_INERT = {"ls_init_value": None, "output_tokens": False, "norm_kwargs": None, "block_type": None,
                "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                "scale_attn": False, "scale_fc": False, "act_kwargs": ...}
_VISION_INERT = {**_BLOCK_INERT, "attentional_pool": False, "timm_model_name": None,
                 "patch_dropout": ...,  # a training-time drop; clipa's token reduction is set per stage
                 **dict.fromkeys(("attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
                                  "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"), ...)}
_TEXT_INERT = {**_BLOCK_INERT, "embed_cls": False, "tokenizer_mode": None, "hf_model_name": None,
               "proj_type": "linear", "proj_bias": False, "tokenizer_kwargs": ...,
               # LayerNorm acts per token, so before or after picking one token is the same
               "final_ln_after_pool": ...,
               **dict.fromkeys(("pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"), ...)}
_TOP = {"embed_dim": "embed_dim", "init_logit_scale": "init_logit_scale", "init_logit_bias": "init_logit_bias"}
_TOP_INERT = {"vision_cfg": ..., "text_cfg": ..., "quick_gelu": ..., "custom_text": False,
              "nonscalar_logit_scale": False, "multimodal_cfg": None,
              "cast_dtype": ...}  # clipa loads weights in fp32 and casts by train.precision / --amp


def model_config_from_openclip(model_cfg: dict) -> ModelConfig:
    """OpenCLIP's ``model_cfg`` (``open_clip_config.json``) as a clipa ``ModelConfig``.

    A setting that would build something clipa's towers lack fails with ``ConfigError`` naming it
    (``vision_cfg.timm_model_name``, ``text_cfg.hf_model_name``, ...).
    """
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if not isinstance(vision_cfg, dict):  # OpenCLIP's ResNet configs give the layer counts as a list
        raise ConfigError(f"unsupported setting vision_cfg={vision_cfg!r} (clipa builds ViT towers only)")
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(f"unsupported setting vision_cfg.layers={vision_cfg['layers']!r} (a ResNet; clipa "
                          "builds ViT towers only)")
    tree = _mapped("model_cfg", model_cfg, _TOP, _TOP_INERT)
    vision = _mapped("vision_cfg", vision_cfg, _VISION, _VISION_INERT)
    text = _mapped("text_cfg", text_cfg, _TEXT, _TEXT_INERT)
    vision["act"] = _act("vision_cfg", vision_cfg.get("act_kwargs"))
    text["act"] = _act("text_cfg", text_cfg.get("act_kwargs"))
    if model_cfg.get("quick_gelu"):
        vision["act"] = text["act"] = "quick_gelu"
    if text.get("tokenizer_path"):
        if text_cfg.get("tokenizer_kwargs") != {"strip_sep_token": True}:
            raise ConfigError(f"unsupported setting text_cfg.tokenizer_kwargs={text_cfg.get('tokenizer_kwargs')!r} "
                              "(clipa's BERT tokenizer is OpenCLIP's HFTokenizer with strip_sep_token=True)")
        text["tokenizer"] = "bert"
        if text["tokenizer_path"] == DEFAULT_BERT:  # the default, so CLIPA_BERT_TOKENIZER still wins
            text["tokenizer_path"] = None
    cfg = from_dict(ModelConfig, {**tree, "vision": vision, "text": text}, prefix="model.")
    validate_model(cfg)
    return cfg


# ----------------------------------------------------------------------------- resolving names


@dataclass
class Resolved:
    """What a name stands for: the config to build, the weights to load into it, its preprocessing."""

    config: ModelConfig
    weights: Path | None
    preprocess: dict = dataclasses.field(default_factory=dict)  # OpenCLIP's preprocess_cfg, when the repo has one


def is_hub_name(name: str | Path) -> bool:
    return isinstance(name, str) and name.startswith(SCHEMAS)


def _repo(name: str) -> str:
    return name.split(":", 1)[1]


def read_hub_config(name: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> dict:
    """The ``open_clip_config.json`` of ``hf-hub:ORG/REPO[@REV]`` or ``local-dir:DIR``."""
    path = fetch(_repo(name), (CONFIG_NAME,), what="OpenCLIP model config", revision=revision, cache_dir=cache_dir)
    config = json.loads(path.read_text())
    if "model_cfg" not in config:
        raise ConfigError(f"{name}: {CONFIG_NAME} has no model_cfg")
    return config


def hub_weights(repo: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A repository's OpenCLIP weights file, safetensors first (as OpenCLIP)."""
    return fetch(repo, WEIGHTS_NAMES, what="OpenCLIP weights", revision=revision, cache_dir=cache_dir)


def _with_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    if not overrides:
        return cfg
    out = from_dict(ModelConfig, merge(to_dict(cfg), overrides), prefix="model.")
    validate_model(out)
    return out


def resolve(name: str, pretrained: str | Path | None = None, *, revision: str | None = None,
            cache_dir: str | Path | None = None, **overrides: Any) -> Resolved:
    """The config and weights file a model name and ``pretrained`` value stand for (downloading if needed)."""
    if is_hub_name(name):
        if pretrained is not None:
            raise ValueError(f"{name} names its own weights: leave pretrained={str(pretrained)!r} out")
        config = read_hub_config(name, revision=revision, cache_dir=cache_dir)
        cfg = _with_overrides(model_config_from_openclip(config["model_cfg"]), overrides)
        weights = hub_weights(_repo(name), revision=revision, cache_dir=cache_dir)
        return Resolved(cfg, weights, config.get("preprocess_cfg", {}))
    if pretrained is None:
        return Resolved(get_model_config(name, **overrides), None)
    if is_hub_name(str(pretrained)):  # a registry model with a repository's weights
        return Resolved(get_model_config(name, **overrides),
                        hub_weights(_repo(str(pretrained)), revision=revision, cache_dir=cache_dir))
    tag = PRETRAINED.get((name, str(pretrained)))
    if tag is None:
        path = Path(pretrained)
        if path.exists():
            return Resolved(get_model_config(name, **overrides), path)
        if isinstance(pretrained, Path) or path.suffix or len(path.parts) > 1:
            raise FileNotFoundError(f"checkpoint not found: {path}")
        known = ", ".join(pretrained_tags(name)) or "none"
        raise HubError(f"pretrained={str(pretrained)!r} is neither a file nor a pretrained tag of {name} "
                       f"(its tags: {known}; or pretrained='hf-hub:ORG/REPO')")
    if tag.quick_gelu:  # OpenCLIP only warns here; the weights are wrong without QuickGELU
        overrides = merge({"vision": {"act": "quick_gelu"}, "text": {"act": "quick_gelu"}}, overrides)
    return Resolved(get_model_config(name, **overrides), hub_weights(tag.repo, revision=revision, cache_dir=cache_dir))


def create_model(name: str, pretrained: str | Path | None = None, *, revision: str | None = None,
                 cache_dir: str | Path | None = None, **overrides: Any) -> CLIP:
    """``clipa.create_model``: a registry name with optional weights (a file, an OpenCLIP pretrained
    tag, or ``hf-hub:ORG/REPO``), or a whole ``hf-hub:ORG/REPO[@REV]`` / ``local-dir:DIR`` model."""
    r = resolve(name, pretrained, revision=revision, cache_dir=cache_dir, **overrides)
    model = CLIP(r.config)
    return model if r.weights is None else load_pretrained(model, r.weights)


def load(name: str | Path, model_name: str | None = None) -> tuple[CLIP, RunConfig | None]:
    """What ``clipa eval`` and ``clipa export`` take, in eval mode with its run config (None
    unless a clipa checkpoint): a clipa run, checkpoint or weights file (``model_name`` naming
    a weights file's architecture), a ``hf-hub:``/``local-dir:`` model, or with ``model_name``
    one of its pretrained tags."""
    if is_hub_name(str(name)) or (model_name is not None and not Path(name).exists()):
        return create_model(model_name or str(name), None if model_name is None else str(name)).eval(), None
    return load_model(name, model_name)


def get_tokenizer(name: str, context_length: int | None = None, *, revision: str | None = None,
                  cache_dir: str | Path | None = None):
    """The tokenizer a registry name or a ``hf-hub:`` / ``local-dir:`` repository's config names."""
    from .tokenizer import get_tokenizer as registry_tokenizer, text_tokenizer

    if not is_hub_name(name):
        return registry_tokenizer(name, context_length)
    text = model_config_from_openclip(read_hub_config(name, revision=revision, cache_dir=cache_dir)["model_cfg"]).text
    return text_tokenizer(text, context_length or text.context_length)


# ----------------------------------------------------------------------------- the way back


def model_card(model: CLIP, repo_id: str | None = None) -> str:
    """A short README for the hub page: what the model is and how OpenCLIP and clipa load it."""
    name = f"hf-hub:{repo_id}" if repo_id else "local-dir:THIS_FOLDER"
    v, t = model.cfg.vision, model.cfg.text
    return (f"---\nlibrary_name: open_clip\ntags:\n- clip\n- clipa\n- zero-shot-image-classification\n---\n\n"
            f"# {repo_id or 'clipa model'}\n\nA CLIP model trained with clipa (ViT image tower "
            f"{model.visual.image_size} px / patch {v.patch_size}, {v.layers} layers of width {v.width}; "
            f"text tower {t.layers} layers of width {t.width}, {t.tokenizer} tokenizer, context "
            f"{model.context_length}), saved in OpenCLIP's hub layout.\n\n```python\nimport open_clip\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms(\"{name}\")\n"
            f"tokenizer = open_clip.get_tokenizer(\"{name}\")\n\nimport clipa\n"
            f"model = clipa.create_model(\"{name}\")\ntokenizer = clipa.get_tokenizer(\"{name}\")\n```\n")


def save_pretrained(model: CLIP, out_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write OpenCLIP's hub layout: ``open_clip_config.json``, ``open_clip_model.safetensors``, ``README.md``.

    A BERT model also gets its tokenizer files, since OpenCLIP reads a ``local-dir:`` model's tokenizer
    from the folder; a tokenizer that lives in a local folder is named as ``repo_id`` on the hub.
    """
    from .export import export_openclip
    from .hubfile import is_repo_id
    from .tokenizer import bert_tokenizer_file

    out = export_openclip(model, out_dir)
    (out / "README.md").write_text(model_card(model, repo_id))
    text = model.cfg.text
    if text.tokenizer == "bert":
        source = bert_tokenizer_file(text.tokenizer_path)
        shutil.copyfile(source, out / source.name)
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                               "do_lower_case": True}) + "\n")
        if repo_id and text.tokenizer_path and not is_repo_id(text.tokenizer_path):
            config = json.loads((out / CONFIG_NAME).read_text())
            config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = repo_id
            (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def push_to_hub(model: CLIP, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload clipa model (OpenCLIP layout)") -> str:
    """Create ``repo_id`` if needed and upload the OpenCLIP layout; returns the commit URL.

    The token is ``huggingface_hub``'s (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import create_repo, upload_folder

    repo_id, revision = split_revision(repo_id, revision)
    create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, repo_id=repo_id)
        return str(upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message))

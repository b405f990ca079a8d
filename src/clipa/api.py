"""OpenCLIP's top-level API for ViT CLIP models, so that code written against ``open_clip``
runs with ``import clipa as open_clip``.

Every public name of ``open_clip`` 3.3.0 is in ``clipa`` with OpenCLIP's meaning, or in
:data:`NOT_PROVIDED` with the reason (the README's table is that dict, and a test holds both
to OpenCLIP's list of names). The model-building names live in ``clipa.hub`` (``create_model``,
``get_tokenizer``, the pretrained tags); this module adds what needs torchvision (transforms)
and the zero-shot helpers, so ``clipa`` imports it on first use.

The transforms follow the model: its image size and its own preprocessing
(``model.cfg.preprocess``: a registry model's CLIP statistics, a pretrained tag's or a hub
repository's ``preprocess_cfg``, a clipa run's training statistics). Training: OpenCLIP's
default random resized crop of 90-100% of the area (bicubic), or ``aug_cfg``'s; evaluation:
the preprocessing's resize (by default the short side, bicubic, and a centre crop). Models
come back in training mode, as OpenCLIP's do: call ``model.eval()`` before encoding.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torchvision.transforms import v2

from .config import CLIP_MEAN, CLIP_STD, DataConfig, PreprocessConfig
from .data import imagenet
from .data.transforms import build_eval_transform, build_train_transform
from .eval.zeroshot import build_classifier
from .hub import create_model, hub_name, read_hub_config
from .models import CLIP, registry
from .models.openclip import from_openclip, read_preprocess, to_openclip

OPENAI_DATASET_MEAN = CLIP_MEAN
OPENAI_DATASET_STD = CLIP_STD
IMAGENET_CLASSNAMES = imagenet.IMAGENET_CLASSNAMES
# OpenCLIP's templates are callables (``template(classname)``), and OpenCLIP's own
# ``build_zero_shot_classifier`` treats a string as ``template.format(classname)``: bound
# ``str.format`` methods of the ``{}`` form are both.
OPENAI_IMAGENET_TEMPLATES = tuple(t.replace("{c}", "{}").format for t in imagenet.OPENAI_IMAGENET_TEMPLATES)
SIMPLE_IMAGENET_TEMPLATES = tuple(t.replace("{c}", "{}").format for t in imagenet.SIMPLE_IMAGENET_TEMPLATES)

# OpenCLIP names clipa does not provide, and why (the README's table "OpenCLIP's names that clipa
# does not provide" is this dict; tests/test_api.py holds them together).
NOT_PROVIDED: dict[tuple[str, ...], str] = {
    ("CLIPTextCfg", "CLIPVisionCfg"):
        "clipa's towers are configured by `clipa.config.ModelConfig` (`vision`, `text`); "
        "`clipa.models.openclip.from_openclip` reads OpenCLIP's config dicts",
    ("CoCa", "CoCaLoss", "CustomTextCLIP", "decode"):
        "clipa builds ViT CLIP models with OpenCLIP's own text transformer: no captioning (CoCa, "
        "whose output `decode` turns into text) and no Hugging Face text towers",
    ("ClipLoss", "DistillClipLoss", "create_loss"):
        "clipa's losses are functions of the forward's output, `clipa.loss.clip_loss(*model(images, text))` "
        "(OpenCLIP's `ClipLoss` value and gradients), `tiled_clip_loss`, `sigmoid_loss`, across processes "
        "`global_loss`; a run picks one with `train.loss`. There is no distillation",
    ("SimpleTokenizer",):
        "clipa's CLIP BPE tokenizer is `clipa.tokenizer.ClipTokenizer` (OpenCLIP's ids, tested), made by "
        "`get_tokenizer` and `tokenize`; it has no `bpe_path`, `clean` or `reduction_mask` (CLIPA's text "
        "reductions are a stage's `text_reduction`)",
    ("convert_weights_to_fp16", "convert_weights_to_lp"):
        "OpenCLIP's half-precision weights with fp32 LayerNorms need its `LayerNormFp32`; clipa casts the "
        "whole model (`create_model(..., precision='bf16')`) or trains under autocast (`train.precision`)",
    ("trace_model",):
        "TorchScript: clipa's models are not traced or scripted (`jit=True` is refused); `torch.compile` "
        "compiles them (`train.compile`)",
    ("download_pretrained", "download_pretrained_from_url", "get_pretrained_url"):
        "clipa fetches a tag's weights from its Hugging Face repository through `huggingface_hub` when "
        "`create_model` names the tag (`get_pretrained_cfg` gives the repository); it keeps no download URLs",
    ("load_openai_model",):
        "OpenAI's original files are TorchScript archives and pickles, which clipa never reads; "
        "`create_model(NAME, pretrained='openai')` loads the same weights",
    ("push_pretrained_to_hf_hub", "push_to_hf_hub"):
        "`clipa.hub.push_to_hub(model, repo_id)` (or `clipa export --push-to-hub ORG/REPO`) writes the same "
        "hub layout; the config, preprocessing and tokenizer come from the model, not from arguments",
}


@dataclasses.dataclass
class AugmentationCfg:
    """``open_clip.AugmentationCfg``: the training transform's augmentation. clipa applies
    ``scale``, ``color_jitter`` (with ``color_jitter_prob``) and ``gray_scale_prob``; like
    OpenCLIP without timm it warns that ``ratio``, ``re_prob`` and ``re_count`` go unused, and it
    refuses ``use_timm``."""

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] | None = None
    color_jitter: float | tuple[float, ...] | None = None
    re_prob: float | None = None
    re_count: int | None = None
    use_timm: bool = False
    color_jitter_prob: float | None = None
    gray_scale_prob: float | None = None


def _augmentation(aug_cfg: AugmentationCfg | dict | None) -> DataConfig:
    """``aug_cfg`` (clipa's or OpenCLIP's ``AugmentationCfg``, or a dict of its fields) as the
    augmentation settings of a run's data config."""
    fields = dataclasses.asdict(aug_cfg) if dataclasses.is_dataclass(aug_cfg) else dict(aug_cfg or {})
    cfg = AugmentationCfg(**fields)
    if cfg.use_timm:
        raise ValueError("aug_cfg use_timm=True: clipa has no timm augmentation")
    unused = [k for k in ("ratio", "re_prob", "re_count") if getattr(cfg, k) is not None]
    if unused:
        warnings.warn(f"Unused augmentation cfg items, specify `use_timm` to use ({unused}).")
    jitter = None
    if cfg.color_jitter_prob:
        if cfg.color_jitter is None or len(cfg.color_jitter) != 4:
            raise ValueError(f"aug_cfg color_jitter={cfg.color_jitter!r}: give four values with color_jitter_prob")
        jitter = tuple(cfg.color_jitter)
    return DataConfig(scale=tuple(cfg.scale), color_jitter=jitter, color_jitter_prob=cfg.color_jitter_prob or 0.0,
                      grayscale_prob=cfg.gray_scale_prob or 0.0)


def _preprocess_fields(**fields: Any) -> dict[str, Any]:
    """OpenCLIP's preprocessing keywords without the unset ones, a scalar mean or std as three channels."""
    out = {k: v for k, v in fields.items() if v is not None}
    for key in ("mean", "std"):
        if key in out and not isinstance(out[key], (list, tuple)):
            out[key] = (out[key],) * 3
    return out


def _square(image_size: int | Sequence[int]) -> int:
    sides = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise ValueError(f"image_size={image_size!r}: clipa's transforms make square images")
    return int(sides[0])


def image_transform(image_size: int | tuple[int, int], is_train: bool, mean: Any = None, std: Any = None,
                    resize_mode: str | None = None, interpolation: str | None = None, fill_color: int = 0,
                    aug_cfg: AugmentationCfg | dict | None = None) -> v2.Compose:
    """``open_clip.image_transform``: PIL image -> normalised ``[3, S, S]`` tensor, the training
    crop with ``aug_cfg`` or the evaluation resize (CLIP's statistics, bicubic, shortest side by
    default). Only ``fill_color=0`` (a black pad for ``resize_mode="longest"``) is built."""
    fields = _preprocess_fields(mean=mean, std=std, resize_mode=resize_mode, interpolation=interpolation,
                                fill_color=fill_color)
    preprocess = read_preprocess(PreprocessConfig(), fields, "image_transform")
    size = _square(image_size)
    if is_train:
        return build_train_transform(size, _augmentation(aug_cfg), preprocess)
    return build_eval_transform(size, preprocess)


def image_transforms(model: CLIP, aug_cfg: AugmentationCfg | dict | None = None) -> tuple[v2.Compose, v2.Compose]:
    """(training, evaluation) transforms of ``model``, PIL image -> normalised ``[3, S, S]`` float tensor."""
    size, preprocess = model.visual.image_size, model.cfg.preprocess
    return build_train_transform(size, _augmentation(aug_cfg), preprocess), build_eval_transform(size, preprocess)


def create_model_and_transforms(model_name: str, pretrained: str | Path | None = None, *,
                                image_mean: Any = None, image_std: Any = None, image_interpolation: str | None = None,
                                image_resize_mode: str | None = None,
                                aug_cfg: AugmentationCfg | dict | None = None,
                                **kwargs: Any) -> tuple[CLIP, v2.Compose, v2.Compose]:
    """``(model, train transform, eval transform)`` as ``open_clip.create_model_and_transforms``:
    the other (keyword) arguments are :func:`clipa.create_model`'s; ``image_*`` override the model's
    preprocessing (and so both transforms), ``aug_cfg`` the training augmentation."""
    model = _create(model_name, pretrained, kwargs, image_mean, image_std, image_interpolation, image_resize_mode)
    return (model, *image_transforms(model, aug_cfg))


def create_model_from_pretrained(model_name: str, pretrained: str | Path | None = None, *,
                                 image_mean: Any = None, image_std: Any = None,
                                 image_interpolation: str | None = None, image_resize_mode: str | None = None,
                                 return_transform: bool = True, **kwargs: Any) -> CLIP | tuple[CLIP, v2.Compose]:
    """``open_clip.create_model_from_pretrained``: :func:`create_model_and_transforms` that
    requires weights and returns ``(model, eval transform)``, or the model alone without
    ``return_transform``."""
    model = _create(model_name, pretrained, {**kwargs, "require_pretrained": True}, image_mean, image_std,
                    image_interpolation, image_resize_mode)
    return (model, image_transforms(model)[1]) if return_transform else model


def _create(model_name: str, pretrained: str | Path | None, kwargs: dict, mean: Any, std: Any,
            interpolation: str | None, resize_mode: str | None) -> CLIP:
    """:func:`clipa.create_model` with OpenCLIP's ``image_*`` keywords folded into ``force_preprocess_cfg``."""
    fields = _preprocess_fields(mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode)
    if fields:
        kwargs["force_preprocess_cfg"] = {**(kwargs.get("force_preprocess_cfg") or {}), **fields}
    return create_model(model_name, pretrained, **kwargs)


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
    """``open_clip.tokenize``: OpenAI CLIP's BPE, ``[B, context_length]`` (start, ids, end, zeros)."""
    from .tokenizer import clip_tokenizer

    return clip_tokenizer(context_length)(texts)


# ----------------------------------------------------------------------------- zero-shot


def build_zero_shot_classifier(model: CLIP, tokenizer: Callable[[list[str]], torch.Tensor],
                               classnames: Sequence[str], templates: Sequence[Callable[[str], str] | str],
                               num_classes_per_batch: int | None = 10, device: str | torch.device = "cpu",
                               use_tqdm: bool = False) -> torch.Tensor:
    """``open_clip.build_zero_shot_classifier``: ``[embed_dim, classes]`` weights, column c the
    renormalised mean of class c's normalised prompt embeddings; a template is a callable or a
    string filled by ``template.format(classname)``."""
    fill = [t if callable(t) else t.format for t in templates]
    per_batch = len(classnames) if num_classes_per_batch is None else num_classes_per_batch
    return build_classifier(model, tokenizer, classnames, fill, device, batch_size=per_batch * len(templates),
                            show_progress=use_tqdm)


def build_zero_shot_classifier_legacy(model: CLIP, tokenizer: Callable[[list[str]], torch.Tensor],
                                      classnames: Sequence[str], templates: Sequence[Callable[[str], str] | str],
                                      device: str | torch.device = "cpu", use_tqdm: bool = False) -> torch.Tensor:
    """``open_clip.build_zero_shot_classifier_legacy``: the same weights, one class at a time."""
    return build_zero_shot_classifier(model, tokenizer, classnames, templates, 1, device, use_tqdm)


# ----------------------------------------------------------------------------- model configs


def get_model_config(model_name: str) -> dict | None:
    """``open_clip.get_model_config``: the OpenCLIP ``model_cfg`` dict (what ``open_clip.CLIP(**cfg)``
    builds) of a registry name, ``hf-hub:``/``local-dir:`` model or OpenCLIP folder; None for an
    unknown name. clipa's own config: ``clipa.models.get_model_config``."""
    if (as_hub := hub_name(model_name)) is not None:
        return to_openclip(read_hub_config(as_hub))["model_cfg"]
    if model_name not in registry.list_models():
        return None
    return to_openclip(registry.get_model_config(model_name))["model_cfg"]


def add_model_config(path: str | Path) -> None:
    """``open_clip.add_model_config``: register each OpenCLIP model config JSON (``embed_dim``,
    ``vision_cfg``, ``text_cfg``) in ``path`` (a file or a folder of them) under its file name.
    A config clipa cannot build fails when it is created, naming the setting."""
    path = Path(path)
    for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
        model_cfg = json.loads(file.read_text())
        if all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            registry.register(file.stem)(lambda c=model_cfg, f=file: from_openclip({"model_cfg": c}, where=str(f)))


def get_model_preprocess_cfg(model: CLIP) -> dict[str, Any]:
    """``open_clip.get_model_preprocess_cfg``: the model's ``preprocess_cfg`` dict (size as
    (height, width), mode, mean, std, interpolation, resize_mode, fill_color)."""
    cfg = to_openclip(model.current_config())["preprocess_cfg"]
    size = model.visual.image_size
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()} | {"size": (size, size)}


def set_model_preprocess_cfg(model: CLIP, preprocess_cfg: dict[str, Any]) -> None:
    """``open_clip.set_model_preprocess_cfg``: the model's preprocessing from a ``preprocess_cfg``
    dict. Its ``size`` must be the model's: the transforms follow the tower's image size."""
    size = preprocess_cfg.get("size", model.visual.image_size)
    if _square(size) != model.visual.image_size:
        raise ValueError(f"preprocess_cfg size {size} differs from the model's image size {model.visual.image_size}")
    model.cfg = dataclasses.replace(model.cfg, preprocess=read_preprocess(model.cfg.preprocess, preprocess_cfg,
                                                                          "preprocess_cfg"))


def get_model_tokenize_cfg(model: CLIP) -> dict[str, int]:
    """``open_clip.get_model_tokenize_cfg``: the text tower's ``context_length`` and ``vocab_size``."""
    return {"context_length": model.context_length, "vocab_size": model.cfg.text.vocab_size}


def list_openai_models() -> list[str]:
    """``open_clip.list_openai_models``: the models with OpenAI's weights (pretrained tag ``openai``)."""
    from .hub import list_pretrained_models_by_tag

    return list_pretrained_models_by_tag("openai")


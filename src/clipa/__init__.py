"""clipa: train CLIP models cheaply (CLIPA token reduction, CLIPA-v2 recipes, BASIC big batches).

The top level is also OpenCLIP's (``import clipa as open_clip``): see ``clipa.api``."""

from .checkpoint import load_checkpoint
from .config import RunConfig, load_config
from .hub import (create_model, get_cast_dtype, get_input_dtype, get_pretrained_cfg, get_tokenizer,
                  is_pretrained_cfg, list_pretrained, list_pretrained_models_by_tag, list_pretrained_tags_by_model,
                  load_model)
from .models import CLIP, list_models

__version__ = "0.1.0"

__all__ = [
    "AugmentationCfg", "CLIP", "IMAGENET_CLASSNAMES", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD",
    "OPENAI_IMAGENET_TEMPLATES", "RunConfig", "SIMPLE_IMAGENET_TEMPLATES", "add_model_config",
    "build_zero_shot_classifier", "build_zero_shot_classifier_legacy", "create_model", "create_model_and_transforms",
    "create_model_from_pretrained", "get_cast_dtype", "get_input_dtype", "get_model_config",
    "get_model_preprocess_cfg", "get_model_tokenize_cfg", "get_pretrained_cfg", "get_tokenizer", "image_transform",
    "is_pretrained_cfg", "list_models", "list_openai_models", "list_pretrained", "list_pretrained_models_by_tag",
    "list_pretrained_tags_by_model", "load_checkpoint", "load_config", "load_model", "set_model_preprocess_cfg",
    "tokenize",
]

# The names not imported above come from clipa.api on first use, so the command line starts
# without torchvision.
_LAZY = frozenset(__all__) - set(globals())


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import api

    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

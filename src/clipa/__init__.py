"""clipa: train CLIP models cheaply (CLIPA token reduction, CLIPA-v2 recipes, BASIC big batches)."""

from .checkpoint import create_model
from .checkpoint import load_model as load_checkpoint
from .config import RunConfig, load_config
from .models import CLIP, get_model_config, list_models

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "RunConfig",
    "create_model",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "load_checkpoint",
    "load_config",
]


def get_tokenizer(name: str, context_length: int | None = None):
    """The tokenizer a registered model was trained with (lazy import keeps start-up quick)."""
    from .tokenizer import get_tokenizer as _get
    return _get(name, context_length)

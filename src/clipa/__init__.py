"""clipa: train CLIP models cheaply (CLIPA token reduction, CLIPA-v2 recipes, BASIC big batches)."""

from .checkpoint import load_model as load_checkpoint
from .config import RunConfig, load_config
from .hub import create_model, list_pretrained
from .models import CLIP, get_model_config, list_models

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "RunConfig",
    "create_model",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_config",
]


def get_tokenizer(name: str, context_length: int | None = None):
    """The tokenizer of a registered model or a ``hf-hub:ORG/REPO`` model (lazy import keeps start-up quick)."""
    from .hub import get_tokenizer as _get
    return _get(name, context_length)

"""Model towers, the CLIP wrapper, the name registry and OpenCLIP's config mapping."""

from .clip import CLIP
from .registry import adapt_state_dict, get_model_config, list_models, load_strict, load_weights

__all__ = ["CLIP", "adapt_state_dict", "get_model_config", "list_models", "load_strict", "load_weights"]

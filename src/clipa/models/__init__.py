"""Model towers, the CLIP wrapper and the name registry."""

from .clip import CLIP
from .registry import adapt_state_dict, create_model, get_model_config, list_models, load_weights

__all__ = ["CLIP", "adapt_state_dict", "create_model", "get_model_config", "list_models", "load_weights"]

"""Model towers, the CLIP wrapper and the name registry."""

from .clip import CLIP
from .registry import create_model, get_model_config, list_models, load_state_dict

__all__ = ["CLIP", "create_model", "get_model_config", "list_models", "load_state_dict"]

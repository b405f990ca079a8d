"""Typed experiment configs: one YAML file describes a whole run (big_vision style).

:mod:`.schema` declares every section (dataclasses with ``Literal`` choices and a docstring per
field), :mod:`.load` reads recipes (``base:``, ``key+:``) and command-line overrides strictly,
:mod:`.validate` checks ranges and relations. Importing from ``clipa.config`` gives all three.
"""

from .load import apply_overrides, config_from_tree, from_dict, load_config, merge, to_dict
from .schema import (
    Activation, CLIP_MEAN, CLIP_STD, CaptionChoice, ConfigError, DEFAULT_LR, DataConfig, DecodeDevice,
    DecodeScale, Device, EvalConfig, GridPosition, ImageReductionConfig, ImageStrategy, Interpolation, LossName,
    ModelConfig, OptimConfig, Parallel, PosEmbed, Precision, PreprocessConfig, ResizeMode, RunConfig, Schedule,
    StageConfig, StageDataConfig, TaggerName, TextConfig, TextPool, TextReductionConfig, TextStrategy,
    TiledLoss, TokenizerName, TrainConfig, VisionConfig, VisionPool, WandbConfig, choices,
)
from .validate import external_actions, is_remote, parse_bytes, validate, validate_model

__all__ = [
    "Activation", "CLIP_MEAN", "CLIP_STD", "CaptionChoice", "ConfigError", "DEFAULT_LR", "DataConfig",
    "DecodeDevice", "DecodeScale", "Device", "EvalConfig", "GridPosition", "ImageReductionConfig",
    "ImageStrategy", "Interpolation", "LossName", "ModelConfig", "OptimConfig", "Parallel", "PosEmbed",
    "Precision", "PreprocessConfig", "ResizeMode", "RunConfig", "Schedule", "StageConfig", "StageDataConfig",
    "TaggerName", "TextConfig", "TextPool", "TextReductionConfig", "TextStrategy", "TiledLoss", "TokenizerName",
    "TrainConfig", "VisionConfig", "VisionPool", "WandbConfig", "apply_overrides", "choices",
    "config_from_tree", "external_actions", "from_dict", "is_remote", "load_config", "merge", "parse_bytes",
    "to_dict", "validate", "validate_model",
]

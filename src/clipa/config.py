"""Typed experiment configs: one YAML file describes a whole run (big_vision style).

Every section is a dataclass; loading is strict, so a misspelt or mistyped key fails
before any work starts, naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


# ----------------------------------------------------------------------------- model


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ln_pre: bool = True
    pool: str = "tok"  # "tok" (class token) | "avg" (mean of patch tokens)
    final_ln_after_pool: bool = False
    pos_embed: str = "learned"  # "learned" | "sincos" (fixed 2-D sin-cos)
    act: str = "gelu"  # "gelu" | "gelu_tanh" | "quick_gelu"

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    causal: bool = True
    pool: str = "argmax"  # "argmax" (end-of-text, highest id) | "last" | "first"
    tokenizer: str = "clip"  # "clip" (byte-level BPE) | "bert" (WordPiece, local files)
    tokenizer_path: str | None = None  # folder or vocab.txt for the "bert" tokenizer
    act: str = "gelu"


@dataclass
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None  # set for the sigmoid (SigLIP) loss
    grad_checkpointing: bool = False


# ----------------------------------------------------------------------------- token reduction


@dataclass
class ImageReductionConfig:
    """How the image tower drops patch tokens in training (CLIPA section 1).

    "resize" is done by the stage's image size; the others select patches after the
    position embedding. ``ratio`` is the fraction removed, ``keep`` a target count.
    """

    strategy: str = "none"  # "none" | "resize" | "random" | "grid" | "block"
    ratio: float = 0.0
    keep: int | None = None
    grid_position: str = "fixed"  # for "grid": "fixed" or "random" per sample


@dataclass
class TextReductionConfig:
    """How captions are cut to the stage's text length (CLIPA section 2)."""

    strategy: str = "truncate"  # "truncate" | "random" | "block" | "syntax"
    tagger: str = "builtin"  # for "syntax": "builtin" (offline) | "nltk"


# ----------------------------------------------------------------------------- data, stages, run


@dataclass
class DataConfig:
    source: str = "digits"  # "digits" | "world" (built in) | webdataset pattern | csv path | folder
    weights: list[float] | None = None  # per-source weights when source joins several with "::"
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = ","
    workers: int = 0
    shuffle_buffer: int = 1000
    resampled: bool = False
    caption_choice: str = "random"  # "random" | "first": which of a sample's captions to use
    scale: tuple[float, float] = (0.4, 1.0)  # random resized crop
    color_jitter: tuple[float, float, float, float] | None = None
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.0
    num_samples: int | None = None  # samples per epoch (webdataset); None = one pass
    max_image_pixels: int = 89_478_485  # bigger images are skipped as decompression bombs (PIL default)


@dataclass
class StageConfig:
    """One phase of a schedule: its own resolution, token lengths, optimizer and schedule."""

    name: str = "main"
    image_size: int | None = None  # None = the model's
    image_reduction: ImageReductionConfig = field(default_factory=ImageReductionConfig)
    text_length: int | None = None  # None = the model's context length
    text_reduction: TextReductionConfig = field(default_factory=TextReductionConfig)
    samples: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100  # steps
    schedule: str = "cosine"  # "cosine" | "constant"
    min_lr: float = 0.0


@dataclass
class OptimConfig:
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.2
    grad_clip: float | None = 1.0


@dataclass
class EvalConfig:
    data: str | None = None  # CLIP_benchmark layout folder; None with digits = held-out digits
    every: int = 0  # steps between evaluations; 0 = only at stage ends
    batch_size: int = 256
    max_samples: int | None = None


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "fp32" | "bf16"
    loss: str = "clip"  # "clip" (softmax InfoNCE) | "siglip"
    tiled_loss: str = "auto"  # "auto" (tiled for big batches) | "on" | "off"
    microbatch_size: int | None = None  # BASIC re-materialisation; None = whole batch at once
    parallel: str = "ddp"  # "ddp" | "fsdp" (only under torchrun)
    fsdp_mixed_precision: bool = False
    fsdp_cpu_offload: bool = False
    threads: int | None = None
    output_dir: str = "runs/default"
    resume: str | None = None  # None | "latest" | path to a checkpoint folder
    checkpoint_every: int = 0  # steps; 0 = only at stage ends
    log_every: int = 10
    max_bad_steps: int = 5  # consecutive non-finite losses before stopping
    progress: bool = True


@dataclass
class RunConfig:
    model: str = "clipa-tiny"  # registry name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    # The built-in default: a small CLIP on the digits, about a minute on two CPU cores.
    stages: list[StageConfig] = field(
        default_factory=lambda: [StageConfig(name="digits", samples=16384, batch_size=128, lr=2e-3, warmup=20)]
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- strict loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-safe dict of a config dataclass."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def _set_path(tree: dict, path: str, value: Any) -> None:
    """Set ``a.b.c`` (or ``stages.1.lr``) in a nested dict/list tree, creating mappings."""
    parts = path.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = int(part)
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            # a list key like "stages" must already exist; anything else becomes a mapping
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (so 3, 1e-3, true, [1,2])."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        if key.startswith("stage."):  # shorthand: applies to every stage
            for stage in tree.setdefault("stages", [{}]):
                _set_path(stage, key[len("stage."):], value)
        else:
            _set_path(tree, key, value)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from YAML (or the built-in default when ``path`` is None)."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        tree = loaded
    if overrides:
        if "stages" not in tree:  # `stage.X=...` and `stages.0.X=...` edit the default stages
            tree["stages"] = to_dict(RunConfig())["stages"]
        apply_overrides(tree, overrides)
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return cfg


_CHOICES = {
    "pool": ("tok", "avg"),
    "pos_embed": ("learned", "sincos"),
    "act": ("gelu", "gelu_tanh", "quick_gelu"),
}


def _check(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def validate(cfg: RunConfig) -> None:
    """Check enumerated values and ranges that types alone do not catch."""
    if not cfg.stages:
        raise ConfigError("stages: at least one stage is needed")
    for i, s in enumerate(cfg.stages):
        k = f"stages.{i}"
        _check(s.image_reduction.strategy, ("none", "resize", "random", "grid", "block"),
               f"{k}.image_reduction.strategy")
        _check(s.image_reduction.grid_position, ("fixed", "random"),
               f"{k}.image_reduction.grid_position")
        if not 0.0 <= s.image_reduction.ratio < 1.0:
            raise ConfigError(f"{k}.image_reduction.ratio must be in [0, 1)")
        _check(s.text_reduction.strategy, ("truncate", "random", "block", "syntax"),
               f"{k}.text_reduction.strategy")
        _check(s.text_reduction.tagger, ("builtin", "nltk"), f"{k}.text_reduction.tagger")
        _check(s.schedule, ("cosine", "constant"), f"{k}.schedule")
        if s.samples <= 0 or s.batch_size <= 0:
            raise ConfigError(f"{k}: samples and batch_size must be positive")
    t = cfg.train
    _check(t.device, ("auto", "cpu", "cuda"), "train.device")
    _check(t.precision, ("auto", "fp32", "bf16"), "train.precision")
    _check(t.loss, ("clip", "siglip"), "train.loss")
    _check(t.tiled_loss, ("auto", "on", "off"), "train.tiled_loss")
    _check(t.parallel, ("ddp", "fsdp"), "train.parallel")
    if t.microbatch_size is not None and t.microbatch_size <= 0:
        raise ConfigError("train.microbatch_size must be positive")
    _check(cfg.data.caption_choice, ("random", "first"), "data.caption_choice")


def validate_model(cfg: ModelConfig) -> None:
    for key, allowed in _CHOICES.items():
        _check(getattr(cfg.vision, key), allowed, f"vision.{key}")
    _check(cfg.text.pool, ("argmax", "last", "first"), "text.pool")
    _check(cfg.text.tokenizer, ("clip", "bert"), "text.tokenizer")
    _check(cfg.text.act, _CHOICES["act"], "text.act")
    if cfg.vision.width % cfg.vision.head_width:
        raise ConfigError("vision.width must be a multiple of vision.head_width")
    if cfg.text.width % cfg.text.heads:
        raise ConfigError("text.width must be a multiple of text.heads")

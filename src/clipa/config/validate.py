"""Checks that types alone do not express: value ranges and relations between keys.

Every failure is a ``ConfigError`` naming the key as an override names it (``stages.0.lr``), so
a user mistake stops before any work starts.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterator

from .schema import ConfigError, ModelConfig, RunConfig


# A range rule: what the message says a value must be, and the test. None always passes: it is
# the documented "off" or "default" of every optional field.
Rule = tuple[str, Callable[[Any], bool]]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


POSITIVE: Rule = ("a positive finite number", lambda v: _finite(v) and v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: _finite(v) and v >= 0)
PROBABILITY: Rule = ("in [0, 1]", lambda v: _finite(v) and 0 <= v <= 1)
BELOW_ONE: Rule = ("in [0, 1)", lambda v: _finite(v) and 0 <= v < 1)
AREA: Rule = ("in (0, 1]", lambda v: _finite(v) and 0 < v <= 1)
FINITE: Rule = ("a finite number", _finite)


# Ranged keys of a run config, as overrides name them (``stages.N.`` before each stage key).
RUN_RANGES: tuple[tuple[str, Rule], ...] = (
    ("data.workers", NON_NEGATIVE), ("data.shuffle_buffer", NON_NEGATIVE), ("data.color_jitter_prob", PROBABILITY),
    ("data.grayscale_prob", PROBABILITY), ("data.num_samples", POSITIVE), ("data.max_image_pixels", POSITIVE),
    ("optim.beta1", BELOW_ONE), ("optim.beta2", BELOW_ONE), ("optim.eps", POSITIVE),
    ("optim.weight_decay", NON_NEGATIVE), ("optim.grad_clip", POSITIVE),
    ("eval.every", NON_NEGATIVE), ("eval.batch_size", POSITIVE), ("eval.max_samples", POSITIVE),
    ("train.threads", POSITIVE), ("train.checkpoint_every", NON_NEGATIVE), ("train.keep_last", POSITIVE),
    ("train.timeout_minutes", POSITIVE), ("train.log_every", POSITIVE), ("train.max_bad_steps", POSITIVE),
)
STAGE_RANGES: tuple[tuple[str, Rule], ...] = (
    ("image_size", POSITIVE), ("image_reduction.ratio", BELOW_ONE), ("image_reduction.keep", POSITIVE),
    ("text_length", POSITIVE), ("samples", POSITIVE), ("batch_size", POSITIVE),
    ("lr_per_256", POSITIVE),  # before lr: lr is computed from it
    ("lr", POSITIVE), ("warmup", NON_NEGATIVE), ("min_lr", NON_NEGATIVE),
)


def _get(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def _ranges(cfg: RunConfig) -> Iterator[tuple[str, Any, Rule]]:
    """Every ranged value of a run config, by key. A value a type accepts but the run would
    misread (a negative clip flips gradients, a zero length means "the model's") is listed."""
    d = cfg.data
    for i, w in enumerate(d.weights or []):
        yield f"data.weights.{i}", w, POSITIVE
    yield "data.scale.0", d.scale[0], AREA
    yield "data.scale.1", d.scale[1], AREA
    for i, j in enumerate(d.color_jitter or ()):
        yield f"data.color_jitter.{i}", j, NON_NEGATIVE
    for i, stage in enumerate(cfg.stages):
        for key, rule in STAGE_RANGES:
            yield f"stages.{i}.{key}", _get(stage, key), rule
    for key, rule in RUN_RANGES:
        yield key, _get(cfg, key), rule
    microbatch = cfg.train.microbatch_size
    yield "train.microbatch_size", None if microbatch == "auto" else microbatch, POSITIVE


def validate(cfg: RunConfig) -> None:
    """Check the ranges that types alone do not catch (choices are checked by their types);
    each failure is a ConfigError naming the key, as overrides name it."""
    if not cfg.stages:
        raise ConfigError("stages: at least one stage is needed")
    for key, value, (want, ok) in _ranges(cfg):
        if value is not None and not ok(value):
            raise ConfigError(f"{key} must be {want}, got {value!r}")
    if cfg.data.scale[0] > cfg.data.scale[1]:
        raise ConfigError(f"data.scale: the smaller area comes first, got {list(cfg.data.scale)}")
    for i, s in enumerate(cfg.stages):
        if s.lr is not None and s.lr_per_256 is not None and not math.isclose(s.lr, s.peak_lr, rel_tol=1e-9):
            raise ConfigError(f"stages.{i}: give lr or lr_per_256 (lr = lr_per_256 x batch_size / 256), not both")
        if s.min_lr > s.peak_lr:
            raise ConfigError(f"stages.{i}.min_lr={s.min_lr:g} is above the stage's peak learning rate "
                              f"{s.peak_lr:g}: the cosine would rise")
    if cfg.train.resume == "":
        raise ConfigError('train.resume: give "latest", "auto" or a checkpoint path (or leave it out)')
    if cfg.train.memory_budget is not None:
        parse_bytes(cfg.train.memory_budget, "train.memory_budget")


_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str, what: str = "size") -> int:
    """'80GB' -> 80 x 10^9 bytes, '8GiB' -> 8 x 2^30: a positive number and a unit."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).upper() not in _BYTE_UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"{what}: {text!r} is not a size; give a positive number and a unit, "
                          f"e.g. 80GB, 80GiB or 512MB")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).upper()])


# A model whose fp32 parameters exceed this is refused before anything is built: bigG/14, the
# largest recipe, has 2.5e9; this is 40 times that (400 GB), beyond any one host it is built on.
MAX_PARAMETERS = 10**11


def _model_ranges(cfg: ModelConfig) -> Iterator[tuple[str, Any, Rule]]:
    v, t = cfg.vision, cfg.text
    for key, value in (("embed_dim", cfg.embed_dim), ("vision.image_size", v.image_size),
                       ("vision.patch_size", v.patch_size), ("vision.width", v.width), ("vision.layers", v.layers),
                       ("vision.head_width", v.head_width), ("text.context_length", t.context_length),
                       ("text.vocab_size", t.vocab_size), ("text.width", t.width), ("text.heads", t.heads),
                       ("text.layers", t.layers)):
        yield f"model.{key}", value, POSITIVE
    yield "model.vision.mlp_ratio", v.mlp_ratio, POSITIVE
    yield "model.text.mlp_ratio", t.mlp_ratio, POSITIVE
    yield "model.init_logit_scale", cfg.init_logit_scale, FINITE
    yield "model.init_logit_bias", cfg.init_logit_bias, FINITE
    for i, (m, s) in enumerate(zip(cfg.preprocess.mean, cfg.preprocess.std)):
        yield f"model.preprocess.mean.{i}", m, FINITE
        yield f"model.preprocess.std.{i}", s, POSITIVE


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by the setting that scales them (each block: 4 w^2 + 2 w h weights, biases and
    norms aside), computed from the config alone: what a config would allocate, before it does."""
    v, t = cfg.vision, cfg.text

    def blocks(width: int, layers: int, mlp_ratio: float) -> int:
        return layers * (4 * width * width + 2 * width * int(width * mlp_ratio) + 9 * width)

    grid = (v.image_size // v.patch_size) ** 2
    return {
        "model.vision.layers": blocks(v.width, v.layers, v.mlp_ratio),
        "model.vision.patch_size": 3 * v.patch_size**2 * v.width,
        "model.vision.image_size": (grid + 1) * v.width,
        "model.text.layers": blocks(t.width, t.layers, t.mlp_ratio),
        "model.text.vocab_size": t.vocab_size * t.width,
        "model.text.context_length": t.context_length * t.width,
        "model.embed_dim": (v.width + t.width) * cfg.embed_dim,
    }


def validate_model(cfg: ModelConfig) -> None:
    """Check a model config from any source (the registry with overrides, a hub or folder
    ``open_clip_config.json``, a checkpoint) before anything is allocated: every size positive,
    the shape constraints, and a parameter count within :data:`MAX_PARAMETERS`. Each failure is
    one ConfigError naming the key (and, for size, the estimate)."""
    for key, value, (want, ok) in _model_ranges(cfg):
        if value is not None and not ok(value):
            raise ConfigError(f"{key} must be {want}, got {value!r}")
    if cfg.vision.width % cfg.vision.head_width:
        raise ConfigError("model.vision.width must be a multiple of model.vision.head_width "
                          f"({cfg.vision.width} and {cfg.vision.head_width})")
    if cfg.text.width % cfg.text.heads:
        raise ConfigError(f"model.text.width must be a multiple of model.text.heads ({cfg.text.width} and "
                          f"{cfg.text.heads})")
    if cfg.vision.image_size < cfg.vision.patch_size:
        raise ConfigError(f"model.vision.image_size={cfg.vision.image_size} is smaller than one patch "
                          f"(model.vision.patch_size={cfg.vision.patch_size})")
    if cfg.text.context_length < 2:
        raise ConfigError("model.text.context_length must be 2 or more (a caption's start and end tokens)")
    counts = parameter_counts(cfg)
    total = sum(counts.values())
    if total > MAX_PARAMETERS:
        key = max(counts, key=counts.get)
        raise ConfigError(f"{key}: the model would have about {total:.3g} parameters ({4 * total / 1e9:,.0f} GB in "
                          f"fp32), most of them from {key}; the limit is {MAX_PARAMETERS:.0e} (bigG/14 has 2.5e9)")


# The keys whose value can make clipa run a command, fetch from a network or send data away.
def _remote(value: Any) -> bool:
    return isinstance(value, str) and any(is_remote(p) for p in value.split("::"))


def is_remote(spec: str) -> bool:
    """A data source that runs a command (``pipe:``) or is read over a network (``scheme://``)."""
    return spec.startswith("pipe:") or "://" in spec


def external_actions(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key, what it would do) for every setting of ``cfg`` that runs a command, downloads or sends
    data: a ``pipe:`` or remote data source, a hub model or pretrained weights, a hub tokenizer,
    logging to Weights & Biases. Values a user gives now may do that; values read from a saved
    config may not (``train.resume``)."""
    out = []
    sources = [("data.source", cfg.data.source), ("eval.data", cfg.eval.data)]
    sources += [(f"stages.{i}.data.source", s.data.source) for i, s in enumerate(cfg.stages)]
    out += [(key, f"reads {value!r}, a command or a network source") for key, value in sources if _remote(value)]
    if cfg.model.startswith(("hf-hub:", "local-dir:")):
        out.append(("model", f"loads {cfg.model!r}"))
    if cfg.pretrained is not None:
        out.append(("pretrained", f"loads weights from {cfg.pretrained!r}"))
    tokenizer = cfg.model_overrides.get("text", {}).get("tokenizer_path") if isinstance(
        cfg.model_overrides.get("text"), dict) else None
    if tokenizer is not None:
        out.append(("model_overrides.text.tokenizer_path", f"loads a tokenizer from {tokenizer!r}"))
    if cfg.train.wandb is not None:
        out.append(("train.wandb", "sends the run's metrics and config to Weights & Biases"))
    return out

"""Typed experiment configs: one YAML file describes a whole run (big_vision style).

Every section is a dataclass whose fields carry their type, default and a docstring; every
enumerated choice is a ``Literal`` type, declared once and checked by the strict loader, so a
misspelt key, a wrong type or a choice outside the list fails before any work starts, naming
the key and the valid ones. Ranges that types cannot express are checked in ``validate``.

Recipes compose. A YAML recipe may name another as ``base: path`` (relative to the recipe's
own file; the base may have a base of its own). The recipe is read on top of its base:

- mappings merge key by key, recursively (``train: {seed: 1}`` changes only the seed);
- any other value, lists included, replaces the base's value: a recipe's ``stages`` list
  replaces the base's stages whole, and so do ``data.scale`` and the like;
- ``key+: [...]`` appends to the base's list instead (``stages+: [{name: finetune-336, ...}]``
  runs the base's stages, then the new one); the base must have that list, and ``key`` and
  ``key+`` cannot both appear in one mapping.

Command-line overrides (``key.sub=value``) apply after the bases, then the learning rates are
resolved: a stage that sets ``lr_per_256`` trains at ``lr_per_256 * batch_size / 256``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


# ----------------------------------------------------------------------------- choices

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
VisionPool = Literal["tok", "avg"]
PosEmbed = Literal["learned", "sincos"]
TextPool = Literal["argmax", "last", "first"]
TokenizerName = Literal["clip", "bert"]
ImageStrategy = Literal["none", "resize", "random", "grid", "block"]
GridPosition = Literal["fixed", "random"]
TextStrategy = Literal["truncate", "random", "block", "syntax"]
TaggerName = Literal["builtin", "nltk"]
CaptionChoice = Literal["random", "first"]
Schedule = Literal["cosine", "constant"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LossName = Literal["clip", "siglip"]
TiledLoss = Literal["auto", "on", "off"]
Parallel = Literal["ddp", "fsdp"]
DecodeScale = Literal["per_crop", "worst_crop"]
DecodeDevice = Literal["cpu", "cuda"]


def choices(tp: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` choice type, e.g. ``choices(TextStrategy)``."""
    return typing.get_args(tp)


# ----------------------------------------------------------------------------- model


@dataclass
class VisionConfig:
    """The image tower: a ViT whose patch grid is ``image_size // patch_size`` on a side."""

    image_size: int = 224
    """Input side in pixels at evaluation (a stage may train at another)."""
    patch_size: int = 16
    """Side of a square patch in pixels."""
    width: int = 768
    """Token width."""
    layers: int = 12
    """Transformer blocks."""
    head_width: int = 64
    """Width of one attention head; heads = width / head_width."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``width``."""
    ln_pre: bool = True
    """LayerNorm before the blocks (CLIPA-v2 drops it)."""
    pool: VisionPool = "tok"
    """Pooled token: "tok" is the class token; "avg": the mean of the patch tokens (class token excluded)."""
    final_ln_after_pool: bool = False
    """Apply the final LayerNorm after pooling rather than before (CLIPA-v2)."""
    pos_embed: PosEmbed = "learned"
    """Position table: "learned", or "sincos": the fixed 2-D sin-cos table, recomputed for any grid."""
    act: Activation = "gelu"
    """MLP activation: exact GELU, its tanh approximation, or CLIP's quick GELU."""

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    """The text tower: a transformer over ``context_length`` tokens."""

    context_length: int = 77
    """Tokens per caption at evaluation (a stage may train at fewer)."""
    vocab_size: int = 49408
    """Token embedding rows."""
    width: int = 512
    """Token width."""
    heads: int = 8
    """Attention heads."""
    layers: int = 12
    """Transformer blocks."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``width``."""
    causal: bool = True
    """Causal attention mask (CLIP); CLIPA-v2's text tower attends both ways."""
    pool: TextPool = "argmax"
    """Pooled token: "argmax" is end-of-text (the highest id); "last" or "first" position."""
    tokenizer: TokenizerName = "clip"
    """Tokenizer: "clip" is byte-level BPE (shipped); "bert": WordPiece from local files."""
    tokenizer_path: str | None = None
    """Folder or vocab.txt for the "bert" tokenizer (else $CLIPA_BERT_TOKENIZER)."""
    act: Activation = "gelu"
    """MLP activation, as ``VisionConfig.act``."""


@dataclass
class ModelConfig:
    """A CLIP model: two towers projected to a shared embedding."""

    embed_dim: int = 512
    """Width of the shared image-text embedding."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The image tower."""
    text: TextConfig = field(default_factory=TextConfig)
    """The text tower."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log temperature t (logits are exp(t) * cosine similarity)."""
    init_logit_bias: float | None = None
    """Initial logit bias; set it for the sigmoid (SigLIP) loss."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in backward to save memory."""


# ----------------------------------------------------------------------------- token reduction


@dataclass
class ImageReductionConfig:
    """How the image tower drops patch tokens in training (docs/reference.md#image-token-reduction).

    "resize" is done by the stage's image size; the others select patches after the
    position embedding.
    """

    strategy: ImageStrategy = "none"
    """Rule: "none", "resize" (a smaller image), "random" (FLIP), "grid" (one per 2x2), "block"."""
    ratio: float = 0.0
    """Fraction of patches removed, in [0, 1)."""
    keep: int | None = None
    """A target count of kept patches instead of ``ratio``."""
    grid_position: GridPosition = "fixed"
    """For "grid": the kept place in each window is "fixed" or drawn per sample ("random")."""


@dataclass
class TextReductionConfig:
    """How captions are cut to the stage's text length (docs/reference.md#text-token-reduction)."""

    strategy: TextStrategy = "truncate"
    """Rule: "truncate" (first tokens), "random", "block" (one run), "syntax" (nouns first)."""
    tagger: TaggerName = "builtin"
    """For "syntax": "builtin" works offline; "nltk" matches OpenCLIP given NLTK's data."""


# ----------------------------------------------------------------------------- data, stages, run


@dataclass
class DataConfig:
    """Where training pairs come from and how images are augmented."""

    source: str = "digits"
    """The built-in "digits" or "world", a webdataset pattern, a csv file or a folder; "::" joins several."""
    weights: list[float] | None = None
    """Per-source sampling weights when ``source`` joins several."""
    csv_image_key: str = "filepath"
    """Image path column of a csv source."""
    csv_caption_key: str = "title"
    """Caption column of a csv source."""
    csv_separator: str = ","
    """Field separator of a csv source."""
    workers: int | None = None
    """Loader worker processes per training process; None = the CPU cores this process may use
    divided by the processes on this machine, less one for the training loop (at most 16);
    0 = decode in the training process."""
    prefetch_factor: int = 4
    """Batches each loader worker prepares ahead (DataLoader's prefetch_factor)."""
    persistent_workers: bool = True
    """Keep loader workers alive from one epoch to the next (endless streams never restart them)."""
    shuffle_buffer: int = 1000
    """Samples held for shuffling a stream."""
    resampled: bool = False
    """Draw shards with replacement forever (webdataset) instead of passing over them."""
    caption_choice: CaptionChoice = "random"
    """Which of a sample's captions to use: a "random" one or the "first"."""
    scale: tuple[float, float] = (0.4, 1.0)
    """Area range of the random resized crop."""
    color_jitter: tuple[float, float, float, float] | None = None
    """Brightness, contrast, saturation, hue jitter; None = off."""
    color_jitter_prob: float = 0.8
    """Probability of applying the colour jitter."""
    grayscale_prob: float = 0.0
    """Probability of converting an image to grayscale."""
    num_samples: int | None = None
    """Samples per epoch (webdataset); None = one pass."""
    max_image_pixels: int = 89_478_485
    """Bigger images are skipped as decompression bombs (PIL's default)."""
    decode_scale: DecodeScale = "per_crop"
    """JPEG decoding scale (libjpeg's 1/2, 1/4, 1/8): "per_crop" draws the random crop from the
    header first and decodes at the coarsest scale that still gives that crop the output size;
    "worst_crop" decodes at the scale the smallest possible crop allows."""
    decode: DecodeDevice = "cpu"
    """Where JPEGs are decoded: "cpu" in the loader workers, or "cuda" batched on the GPU
    (torchvision.io.decode_jpeg with nvJPEG; crop, resize and augmentation on the device)."""


@dataclass
class StageDataConfig:
    """What a stage reads in place of the run's ``data`` settings (None keeps the run's)."""

    source: str | None = None
    """This stage's shards, e.g. ones made with ``clipa data resize --size 96`` for an 84 px
    pretraining stage while the 224 px fine-tune reads the originals; None = ``data.source``."""


@dataclass
class StageConfig:
    """One phase of a schedule: its own resolution, token lengths, optimizer and schedule."""

    name: str = "main"
    """Shown in logs and checkpoint names."""
    image_size: int | None = None
    """Training image side; None = the model's (or, for "resize", the size meeting keep/ratio)."""
    image_reduction: ImageReductionConfig = field(default_factory=ImageReductionConfig)
    """Which patch tokens the image tower sees."""
    text_length: int | None = None
    """Training text tokens; None = the model's context length."""
    text_reduction: TextReductionConfig = field(default_factory=TextReductionConfig)
    """How captions are cut to ``text_length``."""
    data: StageDataConfig = field(default_factory=StageDataConfig)
    """Per-stage data overrides (its own ``source``)."""
    samples: int = 10_000
    """Image-text pairs trained on in this stage."""
    batch_size: int = 256
    """Global batch (all ranks together)."""
    lr: float = 1e-3
    """Peak learning rate; computed from ``lr_per_256`` when that is set."""
    lr_per_256: float | None = None
    """Linear scaling rule: lr = lr_per_256 * batch_size / 256, resolved when the config loads
    (so overriding batch_size rescales lr). A stage sets lr or lr_per_256, not both."""
    warmup: int = 100
    """Linear warm-up steps."""
    schedule: Schedule = "cosine"
    """After warm-up: "cosine" decay to ``min_lr`` or "constant"."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine."""

    def __post_init__(self) -> None:
        if self.lr_per_256 is not None:
            self.lr = self.lr_per_256 * self.batch_size / 256


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay on weight matrices only."""

    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.98
    """Adam's second-moment decay."""
    eps: float = 1e-6
    """Adam's epsilon."""
    weight_decay: float = 0.2
    """Decoupled weight decay (not on gains, biases or the logit scale)."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip; None = no clipping."""


@dataclass
class EvalConfig:
    """Zero-shot evaluation during training."""

    data: str | None = None
    """CLIP_benchmark layout folder; None with digits = held-out digits."""
    every: int = 0
    """Steps between evaluations; 0 = only at stage ends."""
    batch_size: int = 256
    """Images per evaluation batch."""
    max_samples: int | None = None
    """Score at most this many samples; None = all."""


@dataclass
class WandbConfig:
    """Weights & Biases logging (``pip install 'clipa[wandb]'``); the keys are ``wandb.init``'s."""

    project: str = "clipa"
    """The wandb project."""
    name: str | None = None
    """The run's display name; None = wandb's."""
    entity: str | None = None
    """Team or user; None = the logged-in user's default."""
    group: str | None = None
    """Runs grouped together in the wandb interface."""
    tags: list[str] = field(default_factory=list)
    """Labels shown on the run."""
    mode: Literal["online", "offline", "disabled"] | None = None
    """None = $WANDB_MODE, else online."""


@dataclass
class TrainConfig:
    """How the run executes: device, precision, loss, parallelism, checkpoints, logs."""

    seed: int = 0
    """Seed of every random source (data order, masking, init)."""
    device: Device = "auto"
    """Where to train: "auto" (CUDA when present), "cpu" or "cuda"."""
    precision: Precision = "auto"
    """Compute precision: "auto" (bf16 on a GPU that supports it, else fp16 on GPU, fp32 on
    CPU), "fp32", "bf16" autocast, or "fp16" autocast with a gradient scaler (V100, T4)."""
    compile: bool = False
    """torch.compile the two towers (the first steps of each stage are slower: compilation)."""
    tf32: bool = True
    """On CUDA, fp32 matmuls and convolutions use TF32 tensor cores."""
    cudnn_benchmark: bool = True
    """On CUDA, cuDNN picks the fastest convolution algorithm for each input shape."""
    keep_host_memory: bool = True
    """On CPU (glibc), memory a step frees is kept for the next one, as CUDA's caching allocator
    does, instead of going back to the system and being faulted in again page by page."""
    loss: LossName = "clip"
    """Contrastive loss: "clip" (softmax InfoNCE) or "siglip" (sigmoid)."""
    tiled_loss: TiledLoss = "auto"
    """Linear-memory tiled loss: "auto" (for big batches), "on" or "off"."""
    microbatch_size: int | None = None
    """BASIC re-materialisation microbatch; None = the whole batch at once."""
    parallel: Parallel = "ddp"
    """Data parallelism under torchrun: "ddp" or "fsdp"."""
    fsdp_mixed_precision: bool = False
    """FSDP gathers bf16 parameters and computes in bf16; gradients are reduced, and the
    sharded parameters and optimizer state kept, in fp32."""
    fsdp_reshard_after_forward: bool = False
    """FSDP frees each block's gathered parameters after every use: least memory, but every
    block is gathered three times per microbatch. False: gathered once per step, for the
    memory of one unsharded copy of the parameters."""
    fsdp_cpu_offload: bool = False
    """FSDP offloads parameters to CPU memory."""
    threads: int | None = None
    """CPU threads for torch; None = torch's default."""
    output_dir: str = "runs/default"
    """Run folder: config, logs, checkpoints. It belongs to one run: starting a new run in a
    folder that holds another run's checkpoints is an error unless ``resume`` or ``overwrite``."""
    resume: str | None = None
    """None (a new run), "latest" (continue this folder's newest checkpoint), "auto" (continue
    it if the folder has one, else start: for automatic restarts) or a checkpoint path."""
    overwrite: bool = False
    """Start afresh in a folder holding another run's checkpoints, deleting them."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = only at stage ends (and on SIGTERM/SIGINT/SIGUSR1)."""
    keep_last: int | None = None
    """Keep only the newest this many checkpoints; None = keep every one."""
    timeout_minutes: float = 30.0
    """How long a process waits in a collective (or to rendezvous) for the others before it
    stops with an error naming the stalled rank; longer than the longest evaluation."""
    log_every: int = 10
    """Steps between log lines."""
    max_bad_steps: int = 5
    """Consecutive skipped steps (non-finite loss or gradient) before stopping; the count is
    read, and so checked, at log steps, checkpoints and stage ends."""
    progress: bool = True
    """Show a progress bar."""
    wandb: WandbConfig | None = None
    """Also log scalars to Weights & Biases (TensorBoard always)."""


@dataclass
class RunConfig:
    """A whole experiment: model, data, stages in order, optimizer, evaluation, execution."""

    model: str = "clipa-tiny"
    """Registry name of the model."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Nested changes to the registry config, e.g. {vision: {pos_embed: sincos}}."""
    pretrained: str | None = None
    """Weights to start from."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    # The built-in default: a small CLIP on the digits, about a minute on two CPU cores.
    stages: list[StageConfig] = field(
        default_factory=lambda: [StageConfig(name="digits", samples=16384, batch_size=128, lr=2e-3, warmup=20)]
    )
    """Stages run in order; weights carry over, optimizer and schedule restart."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Execution."""


# ----------------------------------------------------------------------------- strict loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if isinstance(value, bool) and "on" in args:  # YAML 1.1 reads on/off (and yes/no) as booleans
            value = "on" if value else "off"
        if isinstance(value, str) and value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(args)}")
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
            return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        # items are named as overrides name them: stages.0.lr
        out = [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
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
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and choices outside a
    ``Literal`` raise ConfigError."""
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


# ----------------------------------------------------------------------------- composing recipes


def merge(base: dict, child: dict, where: str = "") -> dict:
    """``child`` read on top of ``base``: mappings merge recursively, other values (lists
    included) replace, and ``key+: [...]`` appends to the base's list ``key``."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(key, str) and key.endswith("+"):
            name = key[:-1]
            if name in child:
                raise ConfigError(f"{where}{name}: give '{name}' or '{key}', not both")
            if not isinstance(base.get(name), list) or not isinstance(value, list):
                raise ConfigError(f"{where}{key}: appends a list to the base's list '{name}', "
                                  f"which the base does not have")
            out[name] = base[name] + value
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML parser error says, on one line, with the line and column it names."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The mapping a YAML recipe describes, its ``base:`` chain merged under it."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to this file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = loaded.pop("base", None)
    if base is None:
        return merge({}, loaded)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a path relative to this file, got {base!r}")
    return merge(_read_recipe(path.parent / base, seen + (path.resolve(),)), loaded)


def _set_path(tree: dict, path: str, value: Any, key: str | None = None) -> None:
    """Set ``a.b.c`` (or ``stages.1.lr``) in a nested dict/list tree, creating mappings. A
    list index out of range, or a key below a plain value, is a ConfigError naming the
    override's ``key`` (``path`` unless given)."""
    parts = path.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not 0 <= int(part) < len(node):
                raise ConfigError(f"{key or path}: {where} names no item: {'.'.join(parts[:i]) or 'the list'} "
                                  f"has {len(node)} (numbered from 0)")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{key or path}: {'.'.join(parts[:i])} is a single value, it has no '{part}'")
        if i == len(parts) - 1:
            break
        if isinstance(node, dict) and (part not in node or node[part] is None):
            # a list key like "stages" must already exist; anything else becomes a mapping
            node[part] = {}
        node = node[part]
    node[part] = value
    # lr and lr_per_256 say the same thing: the one given last wins
    other = _LR_PAIR.get(parts[-1])
    if other is not None and isinstance(node, dict):
        node.pop(other, None)


_LR_PAIR = {"lr": "lr_per_256", "lr_per_256": "lr"}


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (so 3, 1e-3, true, [1,2])."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
        if key.startswith("stage."):  # shorthand: applies to every stage
            for stage in tree.setdefault("stages", [{}]):
                _set_path(stage, key[len("stage."):], value, key)
        else:
            _set_path(tree, key, value)
    return tree


def _check_lr_pairs(tree: dict) -> None:
    """A stage gives lr or lr_per_256; both only when they agree (as a saved config does)."""
    stages = tree.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict) or stage.get("lr") is None or stage.get("lr_per_256") is None:
            continue
        try:
            scaled = float(stage["lr_per_256"]) * stage.get("batch_size", StageConfig.batch_size) / 256
            agree = math.isclose(float(stage["lr"]), scaled, rel_tol=1e-9)
        except (TypeError, ValueError):
            continue  # a mistyped value: from_dict names it
        if not agree:
            raise ConfigError(f"stages.{i}: give lr or lr_per_256 (lr = lr_per_256 x batch_size / 256), "
                              f"not both")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML recipe and its bases (or the built-in default when
    ``path`` is None), apply ``overrides``, then resolve and check it."""
    return config_from_tree(_read_recipe(Path(path)) if path is not None else {}, overrides)


def config_from_tree(tree: dict, overrides: list[str] | None = None) -> RunConfig:
    """A run config from a mapping (a recipe's, or a saved run's ``to_dict``) and ``overrides``."""
    tree = copy.deepcopy(tree)
    _check_lr_pairs(tree)
    named = any(o.split("=", 1)[0] in ("stage.name", "stages.0.name") for o in overrides or [])
    default_stages = "stages" not in tree and not named
    if overrides:
        if "stages" not in tree:  # `stage.X=...` and `stages.0.X=...` edit the default stages
            tree["stages"] = to_dict(RunConfig())["stages"]
        apply_overrides(tree, overrides)
    cfg = from_dict(RunConfig, tree)
    if default_stages and cfg.data.source != "digits" and cfg.stages[0].name == "digits":
        cfg.stages[0].name = StageConfig.name  # the built-in stage is named after the built-in data
    validate(cfg)
    return cfg


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


def _ranges(cfg: RunConfig) -> Iterator[tuple[str, Any, Rule]]:
    """Every ranged value of a run config, by key. A value a type accepts but the run would
    misread (a negative clip flips gradients, a zero length means "the model's") is listed."""
    d, o, e, t = cfg.data, cfg.optim, cfg.eval, cfg.train
    for i, w in enumerate(d.weights or []):
        yield f"data.weights.{i}", w, POSITIVE
    yield "data.workers", d.workers, NON_NEGATIVE
    yield "data.shuffle_buffer", d.shuffle_buffer, NON_NEGATIVE
    yield "data.scale.0", d.scale[0], AREA
    yield "data.scale.1", d.scale[1], AREA
    for i, j in enumerate(d.color_jitter or ()):
        yield f"data.color_jitter.{i}", j, NON_NEGATIVE
    yield "data.color_jitter_prob", d.color_jitter_prob, PROBABILITY
    yield "data.grayscale_prob", d.grayscale_prob, PROBABILITY
    yield "data.num_samples", d.num_samples, POSITIVE
    yield "data.max_image_pixels", d.max_image_pixels, POSITIVE
    for i, s in enumerate(cfg.stages):
        k = f"stages.{i}"
        yield f"{k}.image_size", s.image_size, POSITIVE
        yield f"{k}.image_reduction.ratio", s.image_reduction.ratio, BELOW_ONE
        yield f"{k}.image_reduction.keep", s.image_reduction.keep, POSITIVE
        yield f"{k}.text_length", s.text_length, POSITIVE
        yield f"{k}.samples", s.samples, POSITIVE
        yield f"{k}.batch_size", s.batch_size, POSITIVE
        yield f"{k}.lr_per_256", s.lr_per_256, POSITIVE  # first: lr is computed from it
        yield f"{k}.lr", s.lr, POSITIVE
        yield f"{k}.warmup", s.warmup, NON_NEGATIVE
        yield f"{k}.min_lr", s.min_lr, NON_NEGATIVE
    yield "optim.beta1", o.beta1, BELOW_ONE
    yield "optim.beta2", o.beta2, BELOW_ONE
    yield "optim.eps", o.eps, POSITIVE
    yield "optim.weight_decay", o.weight_decay, NON_NEGATIVE
    yield "optim.grad_clip", o.grad_clip, POSITIVE
    yield "eval.every", e.every, NON_NEGATIVE
    yield "eval.batch_size", e.batch_size, POSITIVE
    yield "eval.max_samples", e.max_samples, POSITIVE
    yield "train.microbatch_size", t.microbatch_size, POSITIVE
    yield "train.threads", t.threads, POSITIVE
    yield "train.checkpoint_every", t.checkpoint_every, NON_NEGATIVE
    yield "train.keep_last", t.keep_last, POSITIVE
    yield "train.timeout_minutes", t.timeout_minutes, POSITIVE
    yield "train.log_every", t.log_every, POSITIVE
    yield "train.max_bad_steps", t.max_bad_steps, POSITIVE


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
    if cfg.train.resume == "":
        raise ConfigError('train.resume: give "latest", "auto" or a checkpoint path (or leave it out)')


def validate_model(cfg: ModelConfig) -> None:
    """Check the model's shape constraints (choices are checked by their types)."""
    if cfg.vision.width % cfg.vision.head_width:
        raise ConfigError("vision.width must be a multiple of vision.head_width")
    if cfg.text.width % cfg.text.heads:
        raise ConfigError("text.width must be a multiple of text.heads")

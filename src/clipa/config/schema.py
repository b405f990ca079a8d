"""The config schema: every section of a run as a dataclass (torchtitan style).

Each field carries its type, default and a docstring; every enumerated choice is a ``Literal``
type, declared once, which the strict loader (:mod:`.load`) checks, so a misspelt key, a wrong
type or a choice outside the list fails before any work starts, naming the key and the valid
ones. Ranges that types cannot express are checked in :mod:`.validate`. Nothing here is
resolved: a stage's learning rate, image size or loader workers are decided once, from these
values, by ``clipa.train.stage.plan_stages`` and ``clipa.runtime.resolve_runtime``.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


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
Interpolation = Literal["bicubic", "bilinear", "nearest"]
ResizeMode = Literal["shortest", "longest", "squash"]


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


# OpenAI CLIP's pixel normalisation: the preprocessing of every registry model.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreprocessConfig:
    """How pixels become the model's input: part of the model, as OpenCLIP's ``preprocess_cfg``.

    Loaders, evaluation, ``create_model_and_transforms`` and the exports all read it from the
    model, so a model is always fed what it was trained on."""

    mean: tuple[float, float, float] = CLIP_MEAN
    """Per-channel mean subtracted from pixels in [0, 1]."""
    std: tuple[float, float, float] = CLIP_STD
    """Per-channel standard deviation the centred pixels are divided by."""
    interpolation: Interpolation = "bicubic"
    """Resampling of the evaluation resize (training crops are always bicubic, as CLIPA)."""
    resize_mode: ResizeMode = "shortest"
    """Evaluation resize: "shortest" side to the size then a centre crop (CLIP), "longest" side
    to the size then padded to a square, or "squash" to the square ignoring the aspect ratio."""


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
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """The pixel preprocessing the model expects (a built-in data source may set its own)."""


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


DEFAULT_LR = 1e-3  # a stage's learning rate when it gives neither lr nor lr_per_256


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
    lr: float | None = None
    """Peak learning rate. Give it or ``lr_per_256``; with neither, 1e-3."""
    lr_per_256: float | None = None
    """Linear scaling rule: lr = lr_per_256 * batch_size / 256 (so overriding batch_size rescales
    the learning rate). A stage gives lr or lr_per_256, not both."""
    warmup: int = 100
    """Linear warm-up steps."""
    schedule: Schedule = "cosine"
    """After warm-up: "cosine" decay to ``min_lr`` or "constant"."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine (at most the peak)."""

    @property
    def peak_lr(self) -> float:
        """The one rule for a stage's learning rate: ``lr``, or ``lr_per_256 * batch_size / 256``."""
        if self.lr_per_256 is not None:
            return self.lr_per_256 * self.batch_size / 256
        return DEFAULT_LR if self.lr is None else self.lr


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
    microbatch_size: int | Literal["auto"] | None = None
    """BASIC re-materialisation microbatch; None = the whole batch at once; "auto" = the largest
    that fits the device's memory (``train.memory_budget``), from the memory plan (``clipa.memory``)."""
    memory_budget: str | None = None
    """The memory ``microbatch_size: auto`` plans for, e.g. "8GB" or "70GiB": required on CPU;
    on a GPU it replaces the GPU's own memory."""
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
    resume_unverified: bool = False
    """Resume from a checkpoint that has no ``checksums.json`` (written before clipa recorded
    them, or copied without it), whose files therefore cannot be verified."""
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
    # The built-in default: a small CLIP on the digits, about a minute and a half on two CPU
    # cores. Warmup 60 of its 128 steps: with 20, lr 2e-3 hit the tower before it had settled and
    # the held-out top-1 swung with the seed (73% at seed 0); with 60, seeds 0/1/2 give 97.5/97.5/97.2%.
    stages: list[StageConfig] = field(
        default_factory=lambda: [StageConfig(name="main", samples=16384, batch_size=128, lr=2e-3, warmup=60)]
    )
    """Stages run in order; weights carry over, optimizer and schedule restart."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Execution."""



"""Memory per rank of one training step, term by term, and the largest microbatch that fits.

Every term is one function of a ``StepSetup`` (plain resolved values: the model, the stage's
image size, kept patches, text length and per-rank batch, the microbatch, precision, device,
parallelism) returning bytes, with a docstring saying which tensors it counts and why they
are alive. ``plan_memory`` adds them up per phase of the step and takes the largest:

- always: fp32 parameters and AdamW's two moments (this rank's shards under FSDP), the
  batch, and under DDP the gradients (its buckets hold them between steps);
- a plain step: the whole per-rank batch's activations meet autocast's weight cache at the
  end of the forward, then the loss's peak, then the backward, text tower first (autograd
  runs the later-created nodes first), the image tower with the text tower's gradients;
- a BASIC step (``train.microbatch_size`` below the per-rank batch, ``bigbatch``): the loss
  runs over cached embeddings with no activation alive, then each microbatch is re-run with
  a graph while the model's gradients already exist (from the second microbatch on);
- the optimizer step: all gradients.

Activations are counted tensor by tensor from what autograd saves in this repository's
blocks (``models/transformer.py``), in the dtypes autocast gives them; attention is
``scaled_dot_product_attention``, whose fused kernels (flash / memory-efficient on CUDA, the
CPU flash kernel) keep the output and one fp32 log-sum-exp per query and head, never the
N x N matrix. The one device difference the formula knows: CUDA autocast runs LayerNorm in
fp32 (its input is saved as an fp32 copy), CPU autocast leaves it in the compute dtype.

Not counted: the CUDA context and NCCL's buffers (outside PyTorch's allocator), the caching
allocator's fragmentation, AdamW's per-tensor step counters (a few hundred scalars) and
terms of O(batch x width) (pooled rows, index vectors). ``DEFAULT_MARGIN`` leaves room for
them. ``tests/test_memory.py`` checks each term by hand and by measurement;
``benchmarks/memory_plan.py`` checks the total against measured CPU peaks and traced peaks
(``memory_trace``) of the CLIPA-v2 recipes at their per-rank shapes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import torch

from .config import (ConfigError, LossName, ModelConfig, Parallel, TextConfig, TrainConfig, VisionConfig, parse_bytes,
                     to_dict)
from .loss import tile_width
from .models import CLIP

DEFAULT_MARGIN = 0.10  # of the device's memory, left for what the formula does not count
FP32 = 4
INDEX = 8  # int64 token ids and patch indices

# ----------------------------------------------------------------------------- sizes


def format_bytes(n: float) -> str:
    """Bytes in binary units a person reads at a glance: 62.3 GiB, 512 MiB, 3.0 KiB."""
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}" if n / div < 100 else f"{n / div:,.0f} {unit}"
    return f"{n:.0f} B"


# ----------------------------------------------------------------------------- the set-up


@dataclass(frozen=True)
class StepSetup:
    """One rank's training step, in the resolved values memory depends on."""

    model: ModelConfig
    image_size: int  # pixels per side at this stage
    seen_patches: int  # patch tokens the image tower keeps (class token excluded)
    text_length: int  # tokens per caption
    local_batch: int  # this rank's share of the contrastive batch
    world_size: int = 1
    microbatch: int | None = None  # BASIC re-materialisation; None or >= local_batch: a plain step
    precision: str = "fp32"  # the autocast dtype: "fp32" (none), "bf16" or "fp16"
    device: str = "cuda"  # whose kernels: "cuda" or "cpu" (autocast's LayerNorm differs)
    parallel: Parallel = "ddp"
    grad_checkpointing: bool = False
    fsdp_reshard_after_forward: bool = False
    fsdp_mixed_precision: bool = False
    tiled_loss: bool = False
    loss: LossName = "clip"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r}: give fp32, bf16 or fp16 (resolve 'auto' first)")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device {self.device!r}: give cuda or cpu")
        if min(self.local_batch, self.world_size, self.microbatch or 1) < 1:
            raise ValueError("batch, world size and microbatch must be positive")

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    @property
    def sharded(self) -> bool:
        return self.parallel == "fsdp" and self.world_size > 1

    @property
    def rematerialised(self) -> bool:
        """Whether the step is BASIC's (microbatches re-run with a graph)."""
        return self.microbatch is not None and self.microbatch < self.local_batch

    @property
    def graph_batch(self) -> int:
        """Samples whose activations are alive at once: a microbatch, or the whole batch."""
        return self.microbatch if self.rematerialised else self.local_batch

    @property
    def autocast(self) -> bool:
        return self.precision != "fp32"

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of activations: autocast's dtype, or bf16 under FSDP's mixed
        precision (whose gathered parameters make every product bf16)."""
        return 2 if self.autocast or (self.sharded and self.fsdp_mixed_precision) else FP32

    @property
    def gathered_bytes(self) -> int:
        """Bytes per element of FSDP's gathered parameters."""
        return 2 if self.fsdp_mixed_precision else FP32


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Tensors:
    """The model's parameters at the stage's sizes, grouped as FSDP shards them: one group
    per transformer block, the rest of the model as the root group, and the temperature
    (0-d, replicated). Shapes come from the model itself, built on the meta device."""

    groups: tuple[tuple[tuple[int, ...], ...], ...]  # [0] is the root group, its first two the position tables
    trainable: int  # parameters AdamW updates
    frozen: int  # the fixed sin-cos position table, when the model has one
    replicated: int  # logit_scale (and logit_bias): never sharded
    matmul_weights: int  # weights the graph saves autocast's copies of (linear, convolution, projections)
    block_matmul_weights: tuple[int, ...]  # of those, each block's
    vocab_width: tuple[int, int]  # the token embedding's shape: its dense gradient
    text_trainable: int  # the text tower's parameters (embeddings, blocks, final norm, projection)
    text_root: int  # those of them in the root group (all but the blocks)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def _matmul_weights(module: torch.nn.Module) -> int:
    """Elements of the weights a module's matrix products read (linear, convolution, qkv)."""
    weights = [m.weight for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    weights += [m.in_proj_weight for m in module.modules() if hasattr(m, "in_proj_weight")]
    return sum(w.numel() for w in weights)


@functools.lru_cache(maxsize=16)
def _tensors(model_json: str) -> Tensors:
    """``Tensors`` of a model at its own sizes (building one on the meta device takes a
    second or two for bigG, so once per model)."""
    import json

    from .config import from_dict

    with torch.device("meta"):
        model = CLIP(from_dict(ModelConfig, json.loads(model_json)))
    blocks = [b for tower in (model.visual.transformer, model.transformer) for b in tower.resblocks]
    replicated = [model.logit_scale] + ([model.logit_bias] if model.logit_bias is not None else [])
    positions = [model.visual.positional_embedding, model.positional_embedding]
    skip = {id(p) for b in blocks for p in b.parameters()} | {id(p) for p in replicated + positions}
    root = tuple(tuple(p.shape) for p in positions + [p for p in model.parameters() if id(p) not in skip])
    return Tensors(
        groups=(root,) + tuple(tuple(tuple(p.shape) for p in b.parameters()) for b in blocks),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        frozen=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        replicated=sum(p.numel() for p in replicated),
        matmul_weights=_matmul_weights(model) + model.visual.proj.numel() + model.text_projection.numel(),
        block_matmul_weights=tuple(_matmul_weights(b) for b in blocks),
        vocab_width=tuple(model.token_embedding.weight.shape),
        text_trainable=sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("visual.", "logit_"))),
        text_root=sum(p.numel() for n, p in model.named_parameters()
                      if not n.startswith(("visual.", "logit_", "transformer."))),
    )


def model_tensors(s: StepSetup) -> Tensors:
    """``Tensors`` of ``s.model`` at the stage's image size and text length: only the two
    position tables change size ((grid^2 + 1) x width and text length x width)."""
    import json

    t = _tensors(json.dumps(to_dict(s.model), sort_keys=True))
    v, txt = s.model.vision, s.model.text
    image_pos = ((s.image_size // v.patch_size) ** 2 + 1, v.width)
    text_pos = (s.text_length, txt.width)
    d_image = math.prod(image_pos) - math.prod(t.groups[0][0])
    d_text = math.prod(text_pos) - math.prod(t.groups[0][1])
    frozen_image = v.pos_embed == "sincos"
    return replace(
        t, groups=((image_pos, text_pos) + t.groups[0][2:],) + t.groups[1:],
        trainable=t.trainable + d_text + (0 if frozen_image else d_image),
        frozen=t.frozen + (d_image if frozen_image else 0),
        text_trainable=t.text_trainable + d_text, text_root=t.text_root + d_text,
    )


def shard_numel(shape: tuple[int, ...], world_size: int) -> int:
    """Elements of one rank's shard: FSDP2 splits dim 0 in ``world_size`` equal chunks,
    padding it up to a multiple (a 0-d tensor is one element)."""
    if not shape:
        return 1
    return math.ceil(shape[0] / world_size) * math.prod(shape[1:])


def _sharded_numel(s: StepSetup, t: Tensors) -> int:
    """Elements of the parameter shards one rank holds (FSDP), or of all parameters."""
    if not s.sharded:
        return t.total - t.replicated
    return sum(shard_numel(shape, s.world_size) for group in t.groups for shape in group)


def parameter_bytes(s: StepSetup) -> int:
    """The fp32 parameters this rank keeps: all of them, or under FSDP its shard of each
    (dim 0 padded to a multiple of the world size) plus the replicated temperature."""
    t = model_tensors(s)
    return FP32 * (_sharded_numel(s, t) + t.replicated)


def gradient_bytes(s: StepSetup) -> int:
    """fp32 gradients of the trainable parameters (autocast's half-precision weight
    gradients are accumulated into fp32 ``.grad``), or of this rank's shards under FSDP."""
    t = model_tensors(s)
    if not s.sharded:
        return FP32 * t.trainable
    frozen_shard = shard_numel((t.frozen,), s.world_size) if t.frozen else 0
    return FP32 * (_sharded_numel(s, t) - frozen_shard + t.replicated)


def optimizer_bytes(s: StepSetup) -> int:
    """AdamW's two fp32 moments per trainable parameter (per shard under FSDP)."""
    return 2 * gradient_bytes(s)


def gathered_parameter_bytes(s: StepSetup) -> int:
    """FSDP's all-gathered (unsharded) parameters alive at the step's peak, in the gather
    dtype (bf16 with ``fsdp_mixed_precision``).

    With ``fsdp_reshard_after_forward=false`` a group stays gathered from its forward to
    its backward (and across the microbatches of a BASIC step): at the end of the forward
    every group is, the whole model. With ``true`` every group, the root included (clipa
    passes the setting explicitly, which turns off FSDP2's keep-the-root rule), is freed
    after its forward and gathered again in the backward, which holds the root (until its
    end) and two blocks: the one running and the one it prefetches."""
    if not s.sharded:
        return 0
    sizes = _group_sizes(s)
    if not s.fsdp_reshard_after_forward:
        return s.gathered_bytes * sum(sizes)
    return s.gathered_bytes * (sizes[0] + sum(sorted(sizes[1:], reverse=True)[:2]))


def text_blocks_released_bytes(s: StepSetup) -> int:
    """What the image tower's backward no longer holds of the text blocks under FSDP, in a
    backward that synchronises gradients: a plain step's, or a BASIC step's last. There each
    text block, whose backward runs first, is reduce-scattered (its accumulated fp32
    gradient freed) and, with ``fsdp_reshard_after_forward=false``, resharded. That
    backward is the peak one when a BASIC step has two microbatches; with more, the middle
    ones hold everything."""
    if not s.sharded or (s.rematerialised and math.ceil(s.local_batch / s.microbatch) > 2):
        return 0
    t = model_tensors(s)
    blocks = t.text_trainable - t.text_root
    gathered = 0 if s.fsdp_reshard_after_forward else s.gathered_bytes * blocks
    return gathered + (FP32 * blocks if s.rematerialised else 0)


def gather_buffer_bytes(s: StepSetup) -> int:
    """The flat buffer FSDP2 all-gathers a group into before copying it out to the
    parameters, when the backward gathers (``fsdp_reshard_after_forward=true``): at the
    backward's start, the root group's (the largest group of a CLIP model)."""
    if not (s.sharded and s.fsdp_reshard_after_forward):
        return 0
    return s.gathered_bytes * max(_group_sizes(s))


def _group_sizes(s: StepSetup) -> list[int]:
    """Elements of each FSDP group, unsharded: the root first, then the blocks."""
    return [sum(math.prod(shape) for shape in g) for g in model_tensors(s).groups]


def unsharded_gradient_bytes(s: StepSetup) -> int:
    """FSDP's gradients of gathered parameters, before they are reduce-scattered to shards.

    A plain step reduce-scatters each block's right after its backward: one block's worth
    (gather dtype) plus the fp32 flat buffer the reduce-scatter reads. A BASIC step skips
    the reduction on all but the last microbatch (``no_sync``), so FSDP2 accumulates every
    group's unsharded gradient in fp32 (its reduce dtype) over the microbatches."""
    if not s.sharded:
        return 0
    sizes = _group_sizes(s)
    if s.rematerialised:
        return FP32 * (sum(sizes) - model_tensors(s).frozen)
    return (s.gathered_bytes + FP32) * max(sizes[1:])


def autocast_weight_bytes(s: StepSetup, forward: bool = False) -> int:
    """Half-precision copies autocast makes of the fp32 weights that enter matrix products
    (linear and convolution weights, the projections). While a forward runs, autocast's
    cache holds a copy of every one of them (``forward``); after it, those the graph saved
    for the backward: all of them, or with gradient checkpointing (a block's forward saves
    nothing) the weights outside the blocks and the block being recomputed. Bias copies
    live only in the cache. None under FSDP's mixed precision: those weights are bf16."""
    if not s.autocast or (s.sharded and s.fsdp_mixed_precision):
        return 0
    t = model_tensors(s)
    if forward or not s.grad_checkpointing:
        return 2 * t.matmul_weights
    blocks = t.block_matmul_weights
    return 2 * (t.matmul_weights - sum(blocks) + max(blocks))


def input_bytes(s: StepSetup) -> int:
    """The per-rank batch on the device: images normalised into the compute dtype
    (``TrainStep.to_device``), token ids as int64."""
    image = 3 * s.image_size**2 * (2 if s.autocast else FP32)
    return s.local_batch * (image + INDEX * s.text_length)


# ----------------------------------------------------------------------------- activations


def layer_norm_saved_bytes(s: StepSetup, residual_bytes: int) -> int:
    """Bytes per element a LayerNorm saves of its input for the backward: the input itself
    (the residual stream), except under CUDA autocast, which runs LayerNorm in fp32 and so
    saves an fp32 copy of a half-precision input."""
    return FP32 if (s.autocast and s.device == "cuda") else residual_bytes


def block_bytes(tokens: int, width: int, hidden: int, heads: int, act: str, compute: int, ln_saved: int) -> int:
    """Bytes one transformer block saves for its backward, per sample (``Block.forward``):

    - each of its two LayerNorms: its input (``ln_saved`` bytes per element) and an fp32
      mean and inverse deviation per token;
    - in the compute dtype: the qkv projection's input (the LayerNorm output) and output
      (3 x width), attention's output (the out-projection reads it as it is), the MLP's
      input, its hidden pre-activation and activation (2 x hidden; quick GELU also keeps
      its sigmoid, a third);
    - attention's fp32 log-sum-exp per head and query (fused kernels; no N x N matrix).

    The block's output is the next block's LayerNorm input, counted there.
    """
    hidden_kept = 3 if act == "quick_gelu" else 2
    per_token = 2 * (ln_saved * width + 2 * FP32) + compute * (6 * width + hidden_kept * hidden) + FP32 * heads
    return tokens * per_token


@dataclass(frozen=True)
class TowerActivations:
    """One tower's saved activations per sample: ``layers`` blocks over ``tokens`` tokens."""

    name: str
    tokens: int
    layers: int
    block: int  # bytes one block saves per sample
    checkpointed_block: int  # with gradient checkpointing: the block's input alone
    ends: int  # before the first block and after the last (embedding, pooling)
    backward: int  # temporaries of one block's backward beyond what it saved

    def saved(self, checkpointing: bool) -> int:
        """Bytes per sample alive at the end of the tower's forward."""
        return self.ends + self.layers * (self.checkpointed_block if checkpointing else self.block)

    def backward_peak(self, checkpointing: bool) -> int:
        """Bytes per sample the backward of one block adds: its temporaries, and with
        checkpointing the block's activations, recomputed."""
        return self.backward + (self.block if checkpointing else 0)


def _tower(name: str, tokens: int, layers: int, width: int, hidden: int, heads: int, act: str, compute: int,
           residual: int, ln_saved: int, ends: int) -> TowerActivations:
    """A tower of ``layers`` alike blocks over ``tokens`` tokens (``residual``: bytes of its
    residual stream, which is all a checkpointed block keeps). A block's backward holds, at its
    worst moment (the MLP's), beyond its saved tensors: the gradient arriving at the block's
    output (residual dtype), the gradients of the activation and of the pre-activation
    (hidden wide), less the activation itself, released once the second projection's
    backward has used it."""
    return TowerActivations(
        name=name, tokens=tokens, layers=layers,
        block=block_bytes(tokens, width, hidden, heads, act, compute, ln_saved),
        checkpointed_block=tokens * residual * width,
        ends=ends,
        backward=tokens * (residual * width + compute * hidden),
    )


def vision_activations(s: StepSetup) -> TowerActivations:
    """The image tower at the stage's size and kept patches (``VisionTransformer``).

    Ends: the patch embedding's input (autocast saves its half-precision copy of the
    images; fp32 saves the batch itself, counted in ``input_bytes``); under token reduction
    the whole grid of patch embeddings, which the gather of the kept ones saves for its
    backward, and their int64 indices; ``ln_pre`` (its input and statistics) when the model has one, and the
    last block's output when the pooling saves it (class-token pooling keeps a view of it;
    CLIPA's mean-then-LayerNorm pooling saves nothing of that size)."""
    v: VisionConfig = s.model.vision
    c = s.compute_bytes
    grid = (s.image_size // v.patch_size) ** 2
    kept = min(s.seen_patches, grid)
    n = kept + 1
    hidden = int(v.width * v.mlp_ratio)
    # the residual stream: the patch embedding's dtype, unless CUDA autocast's fp32 ln_pre feeds it
    cuda_ln = s.autocast and s.device == "cuda"
    residual = FP32 if (v.ln_pre and cuda_ln) else c
    ln_saved = layer_norm_saved_bytes(s, residual)
    ends = 0
    if s.autocast and not (s.sharded and s.fsdp_mixed_precision):
        ends += 2 * 3 * s.image_size**2  # the convolution's half-precision copy of the images
    if kept < grid:
        ends += grid * c * v.width + INDEX * kept
    if v.ln_pre:
        ends += n * (layer_norm_saved_bytes(s, c) * v.width + 2 * FP32)
    if v.pool == "tok":
        ends += 0 if cuda_ln else n * residual * v.width
    elif not v.final_ln_after_pool:
        ends += n * (ln_saved * v.width + 2 * FP32)
    return _tower("image", n, v.layers, v.width, hidden, v.heads, v.act, c, residual, ln_saved, ends)


def text_activations(s: StepSetup) -> TowerActivations:
    """The text tower at the stage's text length (``TextTower``).

    Its residual stream has the token embedding's dtype (fp32, bf16 under FSDP's mixed
    precision): autocast leaves embeddings alone and fp32 + half is fp32. Ends: the final
    LayerNorm's input and statistics and, without autocast, its output, whose row the
    last-token pooling passes to the projection as a view (autocast's cast copies the row)."""
    t: TextConfig = s.model.text
    c = s.compute_bytes
    n = s.text_length
    hidden = int(t.width * t.mlp_ratio)
    residual = 2 if (s.sharded and s.fsdp_mixed_precision) else FP32
    ln_saved = layer_norm_saved_bytes(s, residual)
    ends = n * (ln_saved * t.width + 2 * FP32)
    if t.pool in ("last", "first") and not s.autocast:
        ends += n * residual * t.width
    return _tower("text", n, t.layers, t.width, hidden, t.heads, t.act, c, residual, ln_saved, ends)


def activation_bytes(s: StepSetup, batch: int | None = None) -> int:
    """Activations both towers save for ``batch`` samples (default: the step's graph batch,
    a microbatch or the whole per-rank batch)."""
    batch = s.graph_batch if batch is None else batch
    return batch * sum(tw.saved(s.grad_checkpointing) for tw in (vision_activations(s), text_activations(s)))


def text_gradient_bytes(s: StepSetup) -> int:
    """Gradients the text tower's backward leaves alive while the image tower's backward
    runs (autograd runs the text tower's nodes first: they were created later).

    A plain step: all of the text tower's fp32 gradients (which DDP's buckets hold anyway),
    or under FSDP the blocks' shards and the root group's gathered gradients (token and
    position embeddings, final norm, projection), which wait for the root's reduce-scatter
    at the very end. A BASIC microbatch adds its gradients into those of the previous ones,
    in place, except under FSDP's mixed precision, where the root group's new bf16
    gradients wait for the end of the backward to be added into the fp32 ones."""
    t = model_tensors(s)
    ddp = s.parallel == "ddp" and s.world_size > 1
    if s.rematerialised:
        return 2 * t.text_root if (s.sharded and s.fsdp_mixed_precision) else 0
    if s.sharded:
        return s.gathered_bytes * t.text_root + FP32 * math.ceil((t.text_trainable - t.text_root) / s.world_size)
    return 0 if ddp else FP32 * t.text_trainable


def embedding_gradient_bytes(s: StepSetup) -> int:
    """The token embedding's dense gradient, a new [vocab, width] tensor, when it is added
    into a gradient that exists already rather than becoming it: every BASIC microbatch
    after the first, and every DDP step (DDP copies it into its bucket). Under FSDP's mixed
    precision it waits for the end instead, counted in ``text_gradient_bytes``."""
    ddp = s.parallel == "ddp" and s.world_size > 1
    if not (s.rematerialised or ddp) or (s.sharded and s.fsdp_mixed_precision):
        return 0
    return FP32 * math.prod(model_tensors(s).vocab_width)


# ----------------------------------------------------------------------------- loss and cache


def loss_bytes(s: StepSetup) -> int:
    """Peak of the loss's forward and backward over this rank's b rows against the B
    global columns, in fp32 whatever the precision (``loss``):

    - naive InfoNCE: 4 b x B matrices (two log-softmaxes saved by the forward; in the
      backward, the NLL gradient and the log-softmax gradient of one direction while the
      other's are alive);
    - sigmoid: 5 (logits, signs, their product, and log-sigmoid's saved buffer, then its
      gradient);
    - tiled: 2 blocks of b x tile (a block of logits and its exponentials / gradient).

    Besides: the scaled rows the products read ([b, E] per side), and across ranks the two
    gathered sides [B, E] (plus one [B, E] gradient the tiled backward writes)."""
    b, B, e = s.local_batch, s.global_batch, s.model.embed_dim
    across = s.world_size > 1
    if s.loss == "siglip":
        matrices, rows, cols = 5 * b * B, b, 2 * B if across else 0
    elif s.tiled_loss:
        matrices, rows, cols = 2 * b * tile_width(b, B), 3 * b, 3 * B if across else 0
    else:
        matrices, rows, cols = 4 * b * B, 2 * b if across else b, 2 * B if across else 0
    return FP32 * (matrices + (rows + cols) * e)


def embedding_cache_bytes(s: StepSetup) -> int:
    """BASIC's cache: the embeddings of every microbatch, computed without a graph, and
    their gradients, computed by the loss over the whole batch. During the loss both sides
    are held twice (the microbatches' outputs and their concatenation, fp32); while the
    microbatches are re-run, only the two fp32 gradients [b, E]. The larger is returned;
    ``plan_memory`` places each in its phase."""
    if not s.rematerialised:
        return 0
    return 2 * 2 * FP32 * s.local_batch * s.model.embed_dim


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryPlan:
    """One rank's memory for a step: each term in bytes, the phases they meet in, the peak."""

    setup: StepSetup
    parameters: int
    gradients: int
    optimizer: int
    gathered: int  # FSDP's unsharded parameters
    unsharded_gradients: int  # FSDP's gradients before reduce-scatter
    autocast_weights: int
    inputs: int
    activations: int  # of one microbatch (or the whole per-rank batch)
    loss: int
    cache: int
    phases: dict[str, int] = field(default_factory=dict)
    towers: tuple[TowerActivations, ...] = ()

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


def plan_memory(s: StepSetup) -> MemoryPlan:
    """Every term of ``s`` and the peak over the step's phases (module docstring): the loss,
    the end of the forward (autocast's cache holds every weight copy), the start of the
    text tower's backward (all activations alive, one block's temporaries), the start of
    the image tower's (its activations, the text tower's gradients), the token embedding's
    dense gradient, and the optimizer step (all gradients)."""
    params, grads, opt = parameter_bytes(s), gradient_bytes(s), optimizer_bytes(s)
    gathered, unsharded = gathered_parameter_bytes(s), unsharded_gradient_bytes(s)
    cast, inputs, loss, cache = autocast_weight_bytes(s), input_bytes(s), loss_bytes(s), embedding_cache_bytes(s)
    image, text = vision_activations(s), text_activations(s)
    b, ckpt = s.graph_batch, s.grad_checkpointing
    ddp = s.parallel == "ddp" and s.world_size > 1
    base = params + opt + inputs + (grads if ddp else 0)  # DDP's buckets hold the gradients throughout
    if s.rematerialised:
        kept = 0 if s.fsdp_reshard_after_forward else gathered
        accumulated = unsharded if s.sharded else (0 if ddp else grads)  # from the second microbatch on
        with_graph = base + accumulated + gathered + cast + cache // 2
        phases = {"loss": base + kept + cache + loss}
    else:
        with_graph = base + gathered + cast + unsharded  # one block's gathered gradients under FSDP
        phases = {"loss": with_graph - unsharded + b * (image.saved(ckpt) + text.saved(ckpt)) + loss}
    phases["forward"] = with_graph - cast + autocast_weight_bytes(s, forward=True) + b * (
        image.saved(ckpt) + text.saved(ckpt))
    phases["text backward"] = (with_graph + gather_buffer_bytes(s)
                               + b * (image.saved(ckpt) + text.saved(ckpt) + text.backward_peak(ckpt)))
    image_alive = with_graph + b * image.saved(ckpt) - text_blocks_released_bytes(s)
    phases["image backward"] = image_alive + b * image.backward_peak(ckpt) + text_gradient_bytes(s)
    phases["embedding gradient"] = image_alive + embedding_gradient_bytes(s)
    phases["optimizer"] = params + opt + inputs + grads
    return MemoryPlan(setup=s, parameters=params, gradients=grads, optimizer=opt, gathered=gathered,
                      unsharded_gradients=unsharded, autocast_weights=cast, inputs=inputs,
                      activations=b * (image.saved(ckpt) + text.saved(ckpt)), loss=loss, cache=cache,
                      phases=phases, towers=(image, text))


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_bytes(s: StepSetup) -> int:
    """Bytes one rank writes per checkpoint (``checkpoint.save_checkpoint``): fp32 weights
    (the fixed position table included) and AdamW's two moments. One process and DDP: rank 0
    writes them all, single-file; FSDP: every rank writes its shards (last ranks' shards are
    shorter where dim 0 does not split evenly, so this is an upper bound)."""
    t = model_tensors(s)
    if not s.sharded:
        return FP32 * (t.total + 2 * t.trainable)
    return parameter_bytes(s) + optimizer_bytes(s)


# ----------------------------------------------------------------------------- the microbatch


def _divisors(n: int) -> list[int]:
    """Divisors of n, largest first: microbatches that split the batch evenly."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]), reverse=True)


def largest_microbatch(s: StepSetup, usable: int) -> int | None:
    """The largest microbatch dividing the per-rank batch whose step peaks within
    ``usable`` bytes (the batch itself: a plain step), or None when not even one sample does."""
    for m in _divisors(s.local_batch):
        if plan_memory(replace(s, microbatch=m)).peak <= usable:
            return m
    return None


def usable_bytes(device_bytes: int, margin: float = DEFAULT_MARGIN) -> int:
    """What the plan may fill of a device: ``margin`` of it is kept for what it does not
    count (the CUDA context, NCCL's buffers, the allocator's fragmentation)."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin {margin} must be in [0, 1)")
    return int(device_bytes * (1 - margin))


def choose_microbatch(s: StepSetup, device_bytes: int, margin: float = DEFAULT_MARGIN) -> int:
    """``train.microbatch_size: auto``: the largest microbatch of ``largest_microbatch`` on a
    device of ``device_bytes`` less the margin; an error naming what does not fit if none."""
    m = largest_microbatch(s, usable_bytes(device_bytes, margin))
    if m is None:
        floor = plan_memory(replace(s, microbatch=1))
        raise ValueError(f"the step does not fit in {format_bytes(usable_bytes(device_bytes, margin))} "
                         f"({format_bytes(device_bytes)} less {margin:.0%}) even at microbatch 1: it peaks "
                         f"at {format_bytes(floor.peak)}, of which parameters, gradients and optimizer state "
                         f"{format_bytes(floor.parameters + floor.gradients + floor.optimizer)}; "
                         f"shard with train.parallel=fsdp or use more devices")
    return m


# ----------------------------------------------------------------------------- from a run config


def resolve_precision(precision: str, device: str) -> str:
    """``train.precision`` as the plan reads it: "auto" is bf16 on a GPU (fp16 on older
    GPUs costs the same bytes), fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision


def setup_for_stage(model: ModelConfig, stage, train: TrainConfig, world_size: int, device: str,
                    tiled_loss: bool, microbatch: int | None = None) -> StepSetup:
    """The ``StepSetup`` of a resolved stage (``train.stage.ResolvedStage`` or anything with
    its ``image_size``, ``seen_patches``, ``text_length`` and ``local_batch``) under the run's
    ``train`` settings on ``world_size`` ranks of ``device``."""
    return StepSetup(
        model=model, image_size=stage.image_size, seen_patches=stage.seen_patches,
        text_length=stage.text_length, local_batch=stage.local_batch, world_size=world_size,
        microbatch=microbatch, precision=resolve_precision(train.precision, device), device=device,
        parallel=train.parallel, grad_checkpointing=model.grad_checkpointing,
        fsdp_reshard_after_forward=train.fsdp_reshard_after_forward,
        fsdp_mixed_precision=train.fsdp_mixed_precision, tiled_loss=tiled_loss, loss=train.loss,
    )


def budget_bytes(train: TrainConfig, device_memory: int | None) -> int:
    """The memory ``train.microbatch_size: auto`` plans for: ``train.memory_budget`` when
    given, else ``device_memory`` (a GPU's, from the runtime); on CPU the budget is required
    (the machine's RAM is shared)."""
    if train.memory_budget is not None:
        return parse_bytes(train.memory_budget, "train.memory_budget")
    if device_memory is None:
        raise ConfigError('train.microbatch_size=auto on CPU needs train.memory_budget (e.g. "8GB")')
    return device_memory

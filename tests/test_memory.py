"""The memory plan (``clipa.memory``), term by term, against hand-worked examples and plain
measurement.

Hand-worked model T: embedding 4; image tower 8 px in 4 px patches (4 patches + the class
token = 5 tokens), width 8, 2 heads, MLP 32, 2 blocks, ln_pre, class-token pooling; text
tower context 5, vocabulary 10, width 8, 2 heads, MLP 32, 2 blocks. Its parameters:

- one block: qkv 24 x 8 + 24, out 8 x 8 + 8, two LayerNorms 2 x 16, MLP 32 x 8 + 32 and
  8 x 32 + 8: 872 (of which 768 in matrix products);
- image root: patch embedding 8 x 3 x 4 x 4 = 384, class token 8, positions 5 x 8 = 40,
  ln_pre 16, ln_post 16, projection 8 x 4 = 32: 496;
- text root: tokens 10 x 8 = 80, positions 5 x 8 = 40, final LayerNorm 16, projection 32: 168;
- 4 blocks 3,488, logit scale 1: 4,153 in all; the text tower 168 + 2 x 872 = 1,912.

Measurements: ``memory_trace.LiveBytes`` counts the tensor storages alive as real CPU
operators run (the bytes ``torch.cuda.memory_allocated`` would count), and autograd's
saved-tensor hooks list what a forward keeps. Tolerances are stated where the formula
leaves out O(batch x width) terms.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipa import memory
from clipa.cli import main
from clipa.config import DEFAULT_LR, ConfigError, OptimConfig, TrainConfig, load_config, parse_bytes
from clipa.loss import clip_loss, global_loss, sigmoid_loss, tiled_clip_loss
from clipa.memory import FP32, StepSetup, plan_memory
from clipa.memory_trace import LiveBytes, fake_ranks, trace_step
from clipa.models import CLIP
from clipa.models.registry import get_model_config
from clipa.models.transformer import Block, Transformer
from clipa.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
BLOCK, IMAGE_ROOT, TEXT_ROOT, TOTAL, TEXT = 872, 496, 168, 4153, 1912


def model_t(vision: dict | None = None, text: dict | None = None, embed_dim: int = 4, **overrides):
    """Model T (module docstring), with changes."""
    return get_model_config(
        "clipa-tiny", embed_dim=embed_dim,
        vision={"image_size": 8, "patch_size": 4, "width": 8, "layers": 2, "head_width": 4, **(vision or {})},
        text={"context_length": 5, "vocab_size": 10, "width": 8, "heads": 2, "layers": 2, **(text or {})},
        **overrides)


def setup_t(model=None, **kw) -> StepSetup:
    """A step of model T (or ``model``) at its own sizes, 3 samples per rank, CPU kernels."""
    fields = {"image_size": 8, "seen_patches": 4, "text_length": 5, "local_batch": 3, "device": "cpu", **kw}
    return StepSetup(model=model or model_t(), **fields)


def saved_by(fn, *inputs, model: torch.nn.Module | None = None) -> int:
    """Bytes of the storages a forward leaves alive (what it saved for the backward), its
    output, inputs and the parameters of ``model`` (default: ``fn`` itself) excluded: measured."""
    tracker = LiveBytes()
    tracker.track(inputs, list((model or fn).parameters()))
    before = tracker.now
    with tracker:
        out = fn(*inputs)
    out_bytes = sum(t.untyped_storage().nbytes() for t in (out if isinstance(out, tuple) else (out,)))
    return tracker.now - before - out_bytes


def peak_of(fn, *inputs) -> int:
    """Peak bytes a call adds above its inputs: measured."""
    tracker = LiveBytes()
    tracker.track(inputs)
    before = tracker.now
    with tracker:
        fn(*inputs)
    return tracker.peak - before


# ----------------------------------------------------------------------------- parameters


def test_parameters_are_counted_from_the_model():
    assert memory.parameter_bytes(setup_t()) == FP32 * TOTAL
    t = memory.model_tensors(setup_t())
    assert (t.trainable, t.frozen, t.text_trainable, t.text_root) == (TOTAL, 0, TEXT, TEXT_ROOT)
    assert sum(torch.Size(shape).numel() for g in t.groups for shape in g) == TOTAL - 1  # less logit_scale
    # at 12 px (9 patches: positions 10 x 8, +40) and 3 text tokens (positions 3 x 8, -16)
    assert memory.parameter_bytes(setup_t(image_size=12, seen_patches=9, text_length=3)) == FP32 * (TOTAL + 40 - 16)
    # a fixed sin-cos table is a parameter but no gradient or AdamW state
    sincos = setup_t(model_t(vision={"pos_embed": "sincos"}))
    assert memory.parameter_bytes(sincos) == FP32 * TOTAL
    assert memory.gradient_bytes(sincos) == FP32 * (TOTAL - 40)
    assert memory.optimizer_bytes(sincos) == 2 * FP32 * (TOTAL - 40)


def test_gradients_and_adam_state_as_measured():
    s = setup_t()
    model = CLIP(s.model).train()
    optimizer = build_optimizer(model, OptimConfig(), DEFAULT_LR)
    images, text = torch.randn(3, 3, 8, 8), torch.randint(0, 10, (3, 5))
    clip_loss(*model(images, text)).backward()
    optimizer.step()
    grads = sum(p.grad.nbytes for p in model.parameters())
    state = sum(v.nbytes for st in optimizer.state.values() for k, v in st.items() if k != "step")
    assert memory.gradient_bytes(s) == grads == FP32 * TOTAL
    assert memory.optimizer_bytes(s) == state == 2 * FP32 * TOTAL


def test_fsdp_shards_pad_dim_0_and_match_fully_shard():
    assert memory.shard_numel((10, 8), 4) == 3 * 8  # rows 3 per rank, the last rank's 1 padded
    assert memory.shard_numel((5,), 2) == 3
    assert memory.shard_numel((), 4) == 1
    s = setup_t(world_size=4, parallel="fsdp")
    from clipa.models.parallelize import parallelize

    with fake_ranks(4):  # real tensors, collectives that return at once: rank 0's shards
        model = parallelize(CLIP(s.model), TrainConfig(parallel="fsdp"), torch.device("cpu"), world_size=4)
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    assert memory.parameter_bytes(s) == FP32 * local
    # by hand on 2 ranks: half of every tensor but the logit scale, and the two 5-row
    # position tables padded to 6 rows (4 elements more each)
    assert memory.parameter_bytes(setup_t(world_size=2, parallel="fsdp")) == FP32 * ((TOTAL - 1) // 2 + 8 + 1)


def test_gathered_parameters_and_gradients_under_fsdp():
    s = setup_t(world_size=2, parallel="fsdp")
    assert memory.gathered_parameter_bytes(s) == FP32 * (TOTAL - 1)  # every group, all but logit_scale
    assert memory.gathered_parameter_bytes(dataclasses.replace(s, fsdp_mixed_precision=True)) == 2 * (TOTAL - 1)
    resharded = dataclasses.replace(s, fsdp_reshard_after_forward=True)
    root = IMAGE_ROOT + TEXT_ROOT
    assert memory.gathered_parameter_bytes(resharded) == FP32 * (root + 2 * BLOCK)  # the root and two blocks
    assert memory.gather_buffer_bytes(resharded) == FP32 * BLOCK  # the largest group's flat buffer
    assert memory.gather_buffer_bytes(s) == 0
    # a plain step: one block's gathered gradient and the fp32 buffer it is reduce-scattered from
    assert memory.unsharded_gradient_bytes(s) == (FP32 + FP32) * BLOCK
    assert memory.unsharded_gradient_bytes(dataclasses.replace(s, fsdp_mixed_precision=True)) == (2 + FP32) * BLOCK
    # a BASIC step accumulates every group's gradient in fp32 until its last microbatch
    assert memory.unsharded_gradient_bytes(dataclasses.replace(s, microbatch=1)) == FP32 * (TOTAL - 1)
    assert memory.gathered_parameter_bytes(setup_t()) == memory.unsharded_gradient_bytes(setup_t()) == 0


def test_autocast_weight_copies():
    matmul = 384 + 4 * 768 + 32 + 32  # patch embedding, four blocks' products, two projections
    assert memory.autocast_weight_bytes(setup_t(precision="bf16")) == 2 * matmul
    # checkpointed blocks save nothing: the weights outside them and the block recomputed
    assert memory.autocast_weight_bytes(setup_t(precision="bf16", grad_checkpointing=True)) == 2 * (384 + 64 + 768)
    # while a forward runs, autocast's cache holds them all, checkpointing or not
    assert memory.autocast_weight_bytes(setup_t(precision="bf16", grad_checkpointing=True), forward=True) == 2 * matmul
    assert memory.autocast_weight_bytes(setup_t()) == 0
    fsdp_bf16 = setup_t(precision="bf16", world_size=2, parallel="fsdp", fsdp_mixed_precision=True)
    assert memory.autocast_weight_bytes(fsdp_bf16) == 0
    # measured: what a block's forward saves that does not grow with the batch
    assert 2 * autocast_block_saved(3) - autocast_block_saved(6) == 2 * 768


def autocast_block_saved(batch: int) -> int:
    """What a block of width 8 (MLP 32) saves of 5 bf16 tokens per sample under CPU autocast."""
    torch.manual_seed(0)
    block = Block(8, 2, 4.0, "gelu")

    def under_autocast(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return block(x)

    return saved_by(under_autocast, torch.randn(batch, 5, 8, dtype=torch.bfloat16, requires_grad=True), model=block)


def test_inputs():
    assert memory.input_bytes(setup_t()) == 3 * (3 * 8 * 8 * FP32 + 8 * 5)  # fp32 images, int64 tokens
    assert memory.input_bytes(setup_t(precision="bf16")) == 3 * (3 * 8 * 8 * 2 + 8 * 5)


# ----------------------------------------------------------------------------- activations


def _block_input(dtype=torch.float32):
    return torch.randn(3, 5, 8, dtype=dtype, requires_grad=True)


def test_block_saves_per_token_two_layer_norms_six_widths_two_hiddens_and_lse():
    # per token: LayerNorms 2 x (8 x 4 input + 2 x 4 statistics) = 80; fp32 a, qkv (3), out,
    # MLP input: 6 x 8 x 4 = 192; hidden pre-activation and activation 2 x 32 x 4 = 256; lse 2 x 4
    per_sample = 5 * (80 + 192 + 256 + 8)
    assert memory.block_bytes(5, 8, 32, 2, "gelu", FP32, FP32) == per_sample == 2680
    x = _block_input()
    assert saved_by(Block(8, 2, 4.0, "gelu"), x) + x.nbytes == 3 * per_sample  # the input is ln_1's
    # quick GELU keeps its sigmoid too: 32 x 4 per token more
    assert memory.block_bytes(5, 8, 32, 2, "quick_gelu", FP32, FP32) == per_sample + 5 * 128
    assert saved_by(Block(8, 2, 4.0, "quick_gelu"), x) + x.nbytes == 3 * (per_sample + 5 * 128)
    # bf16 under CPU autocast: half of everything but the fp32 statistics and lse; measured
    # on 6 samples less 3 (the weight copies autocast saves do not grow with the batch)
    half = 5 * (2 * (8 * 2 + 8) + 2 * (6 * 8 + 2 * 32) + 8)
    assert memory.block_bytes(5, 8, 32, 2, "gelu", 2, 2) == half == 1400
    three, six = autocast_block_saved(3), autocast_block_saved(6)
    assert (six - three) / 3 + 5 * 8 * 2 == half
    # CUDA autocast runs LayerNorm in fp32: it saves fp32 copies of its bf16 inputs (hand only: no GPU here)
    assert memory.block_bytes(5, 8, 32, 2, "gelu", 2, FP32) == half + 5 * 2 * 8 * 2
    assert memory.layer_norm_saved_bytes(setup_t(precision="bf16", device="cuda"), 2) == FP32
    assert memory.layer_norm_saved_bytes(setup_t(precision="bf16", device="cpu"), 2) == 2


def test_checkpointed_blocks_keep_their_inputs():
    tower = Transformer(8, 2, 2, 4.0, "gelu")
    tower.grad_checkpointing = True
    x = _block_input()
    vision = memory.vision_activations(setup_t(grad_checkpointing=True))
    assert vision.checkpointed_block == 5 * FP32 * 8
    # the first block's input is x; the second's, the first's output, is what the forward adds
    assert saved_by(tower, x) == 3 * vision.checkpointed_block


def test_image_tower_activations_by_layer_and_kept_tokens():
    s = setup_t()
    v = memory.vision_activations(s)
    assert (v.tokens, v.layers, v.block) == (5, 2, 2680)
    # ends: ln_pre's input and statistics 5 x (8 x 4 + 8); class-token pooling keeps the last output 5 x 8 x 4
    assert v.ends == 5 * 40 + 5 * 32
    # 2 of 4 patches kept: 3 tokens; the gather saves the grid it gathers from (4 x 8 x 4) and int64 indices
    masked = memory.vision_activations(setup_t(seen_patches=2))
    assert (masked.tokens, masked.block, masked.ends) == (3, 3 * 536, 3 * 40 + 3 * 32 + 4 * 32 + 2 * 8)
    # measured; the formula leaves out the pooled [b, 8] LayerNorm output and statistics (3 x 40 bytes)
    model = CLIP(s.model).train()
    images = torch.randn(3, 3, 8, 8)
    assert saved_by(model.visual, images) == 3 * v.saved(False) + 3 * 40
    model.visual.set_token_reduction(memory_reduction(2))
    assert saved_by(model.visual, images) == 3 * masked.saved(False) + 3 * 40


def memory_reduction(keep: int):
    from clipa.config import ImageReductionConfig

    return ImageReductionConfig(strategy="random", keep=keep)


def test_text_tower_activations():
    s = setup_t()
    t = memory.text_activations(s)
    assert (t.tokens, t.layers, t.block) == (5, 2, 2680)
    assert t.ends == 5 * 40  # the final LayerNorm's input and statistics; argmax pooling copies its row
    model = CLIP(s.model).train()
    text = torch.randint(0, 10, (3, 5))
    # measured; left out: the pooled [b, 8] row the projection saves and the two int64
    # vectors that index it (3 x (32 + 2 x 8) bytes)
    assert saved_by(model.encode_text, text, model=model) == 3 * t.saved(False) + 3 * 48


def test_gradients_alive_during_the_image_backward():
    assert memory.text_gradient_bytes(setup_t()) == FP32 * TEXT  # plain step: all the text tower's
    assert memory.text_gradient_bytes(setup_t(world_size=2)) == 0  # DDP's buckets already hold them
    fsdp = setup_t(world_size=2, parallel="fsdp", fsdp_mixed_precision=True)
    assert memory.text_gradient_bytes(fsdp) == 2 * TEXT_ROOT + FP32 * (2 * BLOCK // 2)
    assert memory.text_gradient_bytes(dataclasses.replace(fsdp, microbatch=1)) == 2 * TEXT_ROOT
    assert memory.text_gradient_bytes(setup_t(microbatch=1)) == 0
    assert memory.embedding_gradient_bytes(setup_t(microbatch=1)) == FP32 * 10 * 8
    assert memory.embedding_gradient_bytes(setup_t(world_size=2)) == FP32 * 10 * 8  # DDP: into its bucket
    assert memory.embedding_gradient_bytes(setup_t()) == 0


# ----------------------------------------------------------------------------- loss and cache


def _embeddings(b: int, e: int = 16):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(b, e, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(b, e, generator=g), dim=-1).requires_grad_()
    return img, txt, torch.tensor(2.0, requires_grad=True), torch.tensor(-5.0, requires_grad=True)


def _loss_step(fn):
    def step(img, txt, t, b):
        fn(img, txt, t, b).backward()
    return step


@pytest.mark.parametrize("loss,tiled,world,hand", [
    ("clip", False, 1, 4 * 64 * 64 * 4 + 64 * 16 * 4),  # four b x b matrices and the scaled rows
    ("clip", True, 1, 2 * 64 * 64 * 4 + 3 * 64 * 16 * 4),  # two b x tile blocks (tile 64: all columns)
    ("siglip", False, 1, 5 * 64 * 64 * 4 + 64 * 16 * 4),
    ("clip", False, 2, 4 * 32 * 64 * 4 + (2 * 32 + 2 * 64) * 16 * 4),  # rows against gathered columns
    ("siglip", False, 2, 5 * 32 * 64 * 4 + (32 + 2 * 64) * 16 * 4),
    ("clip", True, 2, 2 * 32 * 64 * 4 + (3 * 32 + 3 * 64) * 16 * 4),
])
def test_loss_peak(loss, tiled, world, hand):
    model = model_t(embed_dim=16, init_logit_bias=-5.0 if loss == "siglip" else None)
    s = setup_t(model, local_batch=64 // world, world_size=world, loss=loss, tiled_loss=tiled)
    assert memory.loss_bytes(s) == hand
    fn = sigmoid_loss if loss == "siglip" else (tiled_clip_loss if tiled else clip_loss)
    with fake_ranks(world):  # real tensors on rank 0 of `world`; the gathers return uninitialised rows
        measured = peak_of(_loss_step(global_loss(fn, 0, world)), *_embeddings(64 // world))
    assert measured == pytest.approx(hand, rel=0.03)  # left out: int64 labels, scalars


def test_basic_embedding_cache():
    assert memory.embedding_cache_bytes(setup_t(microbatch=1)) == 2 * 2 * FP32 * 3 * 4
    assert memory.embedding_cache_bytes(setup_t()) == 0


def test_checkpoint_bytes_as_written(tmp_path):
    from clipa import checkpoint, distributed

    assert memory.checkpoint_bytes(setup_t()) == FP32 * 3 * TOTAL  # weights and two moments
    # FSDP on 2 ranks: each rank its shards (parameters_are_... above) and their moments
    assert memory.checkpoint_bytes(setup_t(world_size=2, parallel="fsdp")) == FP32 * 3 * ((TOTAL - 1) // 2 + 8 + 1)
    big = model_t(vision={"width": 64, "head_width": 16}, text={"width": 64, "vocab_size": 1000})
    model = CLIP(big)
    optimizer = build_optimizer(model, OptimConfig(), DEFAULT_LR)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = checkpoint.TrainState(stage=0, stage_step=1, stage_done=False, global_step=1, config={})
    folder = checkpoint.CheckpointManager(tmp_path, distributed.DistInfo()).save(state, model, model, optimizer, {})
    written = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert written == pytest.approx(memory.checkpoint_bytes(setup_t(big)), rel=0.03)  # headers, rng


# ----------------------------------------------------------------------------- the whole step


TRACED = [  # small steps whose plan is checked against a traced step (fake tensors, CPU kernels)
    setup_t(local_batch=16),
    setup_t(local_batch=16, microbatch=4, grad_checkpointing=True),
    setup_t(local_batch=16, precision="bf16", seen_patches=2, grad_checkpointing=True),
    setup_t(local_batch=16, world_size=2),
    setup_t(local_batch=16, microbatch=4, world_size=2, parallel="fsdp", fsdp_mixed_precision=True,
            precision="bf16"),
    setup_t(local_batch=16, world_size=4, parallel="fsdp", fsdp_reshard_after_forward=True, tiled_loss=True),
]


@pytest.mark.parametrize("s", TRACED, ids=range(len(TRACED)))
def test_plan_matches_a_traced_step(s):
    """Every phase of ``plan_memory`` at once: its peak against the peak of the real step
    (``TrainStep``, FSDP2 over simulated ranks) run on fake tensors; 5%."""
    assert plan_memory(s).peak == pytest.approx(trace_step(s), rel=0.05)


def test_choose_microbatch_takes_the_largest_that_fits():
    s = setup_t(get_model_config("clipa-tiny"), image_size=32, seen_patches=64, text_length=16,
                local_batch=64)
    peaks = {m: plan_memory(dataclasses.replace(s, microbatch=m)).peak for m in (1, 2, 4, 8, 16, 32, 64)}
    assert peaks[16] < peaks[32] < peaks[64]
    device = int(peaks[16] / (1 - memory.DEFAULT_MARGIN)) + 1  # room for 16, not for 32
    assert memory.choose_microbatch(s, device) == 16
    assert memory.choose_microbatch(s, 10 * peaks[64]) == 64  # a plain step
    with pytest.raises(ValueError, match="does not fit .* even at microbatch 1"):
        memory.choose_microbatch(s, peaks[1] // 2)
    assert memory.largest_microbatch(dataclasses.replace(s, local_batch=12), 10 * peaks[64]) == 12
    assert memory._divisors(12) == [12, 6, 4, 3, 2, 1]


def test_sizes_parse_with_units():
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("0.5 MiB") == 2**19
    for bad in ("80XB", "-1GB", "GB", "0GB"):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_bytes(bad)


def test_auto_microbatch_config():
    cfg = load_config(None, ["train.microbatch_size=auto", "train.memory_budget=300MB"])
    assert (cfg.train.microbatch_size, cfg.train.memory_budget) == ("auto", "300MB")
    with pytest.raises(ConfigError, match="train.memory_budget"):
        load_config(None, ["train.memory_budget=300XB"])
    with pytest.raises(ConfigError, match="needs train.memory_budget"):
        memory.budget_bytes(TrainConfig(microbatch_size="auto"), None)


def test_plan_command_prints_memory_per_rank(capsys):
    assert main(["plan", str(ROOT / "configs/clipa_v2_h14_dc1b_84_224.yaml"), "--gpus", "64"]) == 0
    out = capsys.readouterr().out
    assert "memory per rank on 64 x 80GB GPUs" in out
    for stage in ("pretrain-84", "finetune-224"):
        row = next(line for line in out.splitlines() if line.startswith(stage) and "GiB" in line)
        assert " yes " in row


def test_plan_command_traces_each_stage(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: clipa-tiny\nmodel_overrides: {vision: {layers: 1}, text: {layers: 1}}\n"
                      "stages:\n  - {name: one, batch_size: 16, samples: 64}\n"
                      "  - {name: two, batch_size: 16, samples: 64, image_size: 16}\n"
                      "train: {parallel: fsdp}\n")
    assert main(["plan", str(recipe), "--gpus", "2", "--gpu-memory", "1GB", "--trace"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "traced" in line]
    assert [line.split(":")[0] for line in lines[-2:]] == ["one", "two"]


@pytest.mark.parametrize("args,message", [
    (["--gpus", "8", "--gpu-memory", "80XB"], "clipa: error: --gpu-memory: '80XB' is not a size"),
    (["--trace"], "clipa: error: --trace plans memory: give --gpus too"),
    (["--gpus", "7"], "clipa: error: stage 'pretrain-84': batch_size=65536 does not split evenly over 7"),
])
def test_plan_command_errors_are_one_line(capsys, args, message):
    assert main(["plan", str(ROOT / "configs/clipa_v2_h14_dc1b_84_224.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


# ----------------------------------------------------------------------------- auto, end to end

# The child trains with train.microbatch_size=auto and reports the memory of its training
# steps as a GPU would hold it: the RSS high-water mark read as each step returns (restarted
# at the first step), less the RSS before that step, plus the model's parameters, allocated
# before. Read per step, not at the end of the run: the evaluation and checkpoint writes
# after the last step are no part of the budget.
AUTO_CHILD = textwrap.dedent("""
    import json, sys
    from clipa.config import load_config
    from clipa.train import step, trainer

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def high_water():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    seen, call = {"peak": 0}, step.TrainStep.__call__

    def counted(self, images, text):
        if "before" not in seen:
            seen["before"] = rss()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the RSS high-water mark starts again here
        out = call(self, images, text)
        seen["peak"] = max(seen["peak"], high_water())
        return out

    step.TrainStep.__call__ = counted
    run = trainer.Trainer(load_config(None, sys.argv[1:]))
    params = sum(p.nbytes for p in run.model.parameters())
    run.fit()
    print(json.dumps({"training": seen["peak"] - seen["before"] + params}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("overrides,budget,picked", [
    (["stage.samples=512"], "300MB", "picked 64 of 128"),  # the default run, shortened
    (["stage.samples=2048", "stage.batch_size=1024"], "500MB", "picked 128 of 1024"),  # a big batch
])
def test_auto_microbatch_trains_within_the_budget(tmp_path, overrides, budget, picked):
    """The budget bounds live tensor bytes, as a GPU's memory does: glibc is told to give
    freed blocks back at once (``train.keep_host_memory=false``, every block over 64 KiB
    mapped on its own); with its defaults its heap held 40% more in these runs."""
    args = overrides + ["train.microbatch_size=auto", f"train.memory_budget={budget}",
                        f"train.output_dir={tmp_path}", "train.progress=false", "train.threads=1",
                        "train.keep_host_memory=false", "data.workers=0", "eval.max_samples=64"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    out = subprocess.run([sys.executable, "-c", AUTO_CHILD, *args], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert picked in out
    assert json.loads(out.splitlines()[-1])["training"] <= parse_bytes(budget)

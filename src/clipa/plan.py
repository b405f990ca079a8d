"""Compute and memory planner: what a recipe costs, stage by stage, before anything runs.

Each stage trains ``samples`` image-text pairs at its own image size, kept patch count (masking)
and text length; its compute is the analytic training-step FLOPs (``clipa.flops``) times the
samples. Accelerator-hours = FLOPs / (peak FLOP/s x MFU). The defaults describe an A100 in bf16
(312 TFLOP/s dense) at the utilisation that CLIPA-v2's published H/14 GPU-hours imply under this
FLOP count (about 0.27), priced at the paper's A100-80GB rate ($12,247 / 7,776 GPU-hours).

On N GPUs of a given memory, each stage's per-rank memory comes from ``clipa.memory``: its
terms, its peak, whether it fits and the microbatch ``train.microbatch_size: auto`` would pick.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import memory
from .config import RunConfig
from .flops import pair_flops
from .hub import run_model_source
from .train.stage import resolve_stages

A100_BF16_TFLOPS = 312.0
CLIPA_V2_MFU = 0.27
CLIPA_V2_USD_PER_GPU_HOUR = 12_247 / 7_776


@dataclass(frozen=True)
class StageCost:
    name: str
    image_size: int
    image_tokens: int  # per sample, class token included
    text_tokens: int
    samples: int
    steps: int
    step_flops: float  # training FLOPs per pair
    flops: float  # whole stage
    hours: float
    cost: float

    @property
    def tokens(self) -> int:
        return self.samples * (self.image_tokens + self.text_tokens)


def plan_run(cfg: RunConfig, accelerator_tflops: float = A100_BF16_TFLOPS, mfu: float = CLIPA_V2_MFU,
             usd_per_hour: float = CLIPA_V2_USD_PER_GPU_HOUR) -> list[StageCost]:
    """One ``StageCost`` per stage of ``cfg``, from the same stage plans the trainer runs."""
    if accelerator_tflops <= 0 or not 0 < mfu <= 1:
        raise ValueError("accelerator TFLOP/s must be positive and MFU in (0, 1]")
    model = run_model_source(_architecture_only(cfg)).config
    flops_per_hour = accelerator_tflops * 1e12 * mfu * 3600
    costs = []
    for r in resolve_stages(cfg, model):
        f = pair_flops(model, r.image_size, r.seen_patches, r.text_length)
        total = f.train_step * r.samples
        hours = total / flops_per_hour
        costs.append(StageCost(
            name=r.name, image_size=r.image_size, image_tokens=f.image_tokens, text_tokens=f.text_tokens,
            samples=r.samples, steps=r.steps, step_flops=f.train_step,
            flops=total, hours=hours, cost=hours * usd_per_hour,
        ))
    return costs


def _architecture_only(cfg: RunConfig) -> RunConfig:
    """``cfg`` without its pretrained weights: a plan needs the architecture, not a download."""
    return dataclasses.replace(cfg, pretrained=None)


def _count(n: float) -> str:
    """12.81B, 524.3M, 3.2k: short counts a person reads at a glance."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.4g}{suffix}"
    return f"{n:g}"


def _figure(x: float) -> str:
    """Whole numbers from 100 up (with thousands commas), three significant digits below."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _flops(n: float) -> str:
    """FLOPs with an SI prefix (P at most, as accelerators are rated): 2,567,890P, 19.2T, 410G."""
    for div, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(n) >= div:
            return _figure(n / div) + prefix
    return _figure(n)


def _duration(hours: float) -> str:
    """Hours, or minutes or seconds when under one: a small run's time is not 0."""
    for unit, per_hour in (("h", 1), ("min", 60), ("s", 3600)):
        if hours * per_hour >= 1 or unit == "s":
            return _figure(hours * per_hour) + unit


def _usd(cost: float) -> str:
    return "<$0.01" if 0 < cost < 0.01 else f"${cost:,.0f}" if cost >= 100 else f"${cost:,.2f}"


def format_plan(plans: list[StageCost]) -> str:
    """An aligned table: one row per stage, then the totals; every cell carries its unit."""
    head = ("stage", "px", "tokens/pair", "samples", "steps", "tokens", "GFLOPs/pair", "FLOPs",
            "acc-time", "cost")
    rows = [(p.name, str(p.image_size), f"{p.image_tokens}+{p.text_tokens}", _count(p.samples),
             f"{p.steps:,}", _count(p.tokens), _figure(p.step_flops / 1e9), _flops(p.flops),
             _duration(p.hours), _usd(p.cost)) for p in plans]
    total = ("total", "", "", _count(sum(p.samples for p in plans)), f"{sum(p.steps for p in plans):,}",
             _count(sum(p.tokens for p in plans)), "", _flops(sum(p.flops for p in plans)),
             _duration(sum(p.hours for p in plans)), _usd(sum(p.cost for p in plans)))
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(line(head))
    return "\n".join([line(head), rule, *map(line, rows), rule, line(total)])


# ----------------------------------------------------------------------------- memory per rank


@dataclass(frozen=True)
class StageMemory:
    name: str
    plan: memory.MemoryPlan  # at the chosen microbatch (at microbatch 1 when nothing fits)
    usable: int  # bytes of a GPU the plan may fill (its memory less the margin)
    fits: bool
    checkpoint: int  # bytes each rank writes per checkpoint


def plan_stage_memory(cfg: RunConfig, gpus: int, gpu_memory: int, parallel: str | None = None,
                      margin: float = memory.DEFAULT_MARGIN) -> list[StageMemory]:
    """One ``StageMemory`` per stage of ``cfg`` on ``gpus`` GPUs of ``gpu_memory`` bytes, with
    the recipe's settings (``parallel`` replaces ``train.parallel``). The microbatch is the
    recipe's ``train.microbatch_size`` when it gives a number, else the largest that fits."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    model = run_model_source(_architecture_only(cfg)).config
    train = cfg.train if parallel is None else dataclasses.replace(cfg.train, parallel=parallel)
    usable = memory.usable_bytes(gpu_memory, margin)
    # the stage plans without a microbatch: the recipe's number, else the largest that fits, is chosen below
    plain = dataclasses.replace(cfg, train=dataclasses.replace(train, microbatch_size=None))
    out = []
    for r in resolve_stages(plain, model, gpus):
        setup = memory.setup_for_stage(model, r, train, gpus, "cuda", r.tiled_loss)
        micro = train.microbatch_size
        if not isinstance(micro, int):
            micro = memory.largest_microbatch(setup, usable)
        plan = memory.plan_memory(dataclasses.replace(setup, microbatch=micro or 1))
        out.append(StageMemory(r.name, plan, usable, micro is not None and plan.peak <= usable,
                               memory.checkpoint_bytes(setup)))
    return out


def format_memory(stages: list[StageMemory]) -> str:
    """An aligned table of each stage's per-rank terms, peak, fit and microbatch, then a line
    per stage on its activations by tower, layer and kept tokens."""
    gb = memory.format_bytes
    def cell(n: int) -> str:
        return gb(n) if n else "-"

    head = ("stage", "batch/rank", "micro", "params", "grads", "adam", "gathered", "fsdp grads", "casts",
            "activations", "cache", "loss", "peak", "phase", "fits", "ckpt/rank")
    rows = []
    for st in stages:
        p, s = st.plan, st.plan.setup
        micro = "-" if not st.fits and s.microbatch == 1 else f"{min(s.microbatch or s.local_batch, s.local_batch):,}"
        rows.append((st.name, f"{s.local_batch:,}", micro, gb(p.parameters), gb(p.gradients), gb(p.optimizer),
                     cell(p.gathered), cell(p.unsharded_gradients), cell(p.autocast_weights), gb(p.activations),
                     cell(p.cache), gb(p.loss), gb(p.peak), p.peak_phase, "yes" if st.fits else "NO",
                     gb(st.checkpoint)))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 13) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    lines = [line(head), "-" * len(line(head)), *map(line, rows)]
    for st in stages:
        s = st.plan.setup
        towers = "; ".join(
            f"{t.name} {t.layers} blocks x {t.tokens} tokens: {gb(t.block)}/block"
            f" ({gb(t.checkpointed_block)} checkpointed)" for t in st.plan.towers)
        lines.append(f"{st.name}: per sample, {s.precision}{', checkpointed' if s.grad_checkpointing else ''}: {towers}")
    return "\n".join(lines)

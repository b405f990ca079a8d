"""Compute planner: what a recipe costs, stage by stage, before anything runs.

Each stage trains ``samples`` image-text pairs at its own image size, kept patch count (masking)
and text length; its compute is the analytic training-step FLOPs (``clipa.flops``) times the
samples. Accelerator-hours = FLOPs / (peak FLOP/s x MFU). The defaults describe an A100 in bf16
(312 TFLOP/s dense) at the utilisation that CLIPA-v2's published H/14 GPU-hours imply under this
FLOP count (about 0.27), priced at the paper's A100-80GB rate ($12,247 / 7,776 GPU-hours).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig
from .flops import pair_flops
from .models.registry import get_model_config
from .train.stage import resolve_stage

A100_BF16_TFLOPS = 312.0
CLIPA_V2_MFU = 0.27
CLIPA_V2_USD_PER_GPU_HOUR = 12_247 / 7_776


@dataclass(frozen=True)
class StagePlan:
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
             usd_per_hour: float = CLIPA_V2_USD_PER_GPU_HOUR) -> list[StagePlan]:
    """One ``StagePlan`` per stage of ``cfg``."""
    if accelerator_tflops <= 0 or not 0 < mfu <= 1:
        raise ValueError("accelerator TFLOP/s must be positive and MFU in (0, 1]")
    model = get_model_config(cfg.model, **cfg.model_overrides)
    flops_per_hour = accelerator_tflops * 1e12 * mfu * 3600
    plans = []
    for stage in cfg.stages:
        r = resolve_stage(stage, model)
        f = pair_flops(model, r.image_size, r.seen_patches, r.text_length)
        total = f.train_step * stage.samples
        hours = total / flops_per_hour
        plans.append(StagePlan(
            name=stage.name, image_size=r.image_size, image_tokens=f.image_tokens, text_tokens=f.text_tokens,
            samples=stage.samples, steps=r.steps, step_flops=f.train_step,
            flops=total, hours=hours, cost=hours * usd_per_hour,
        ))
    return plans


def _count(n: float) -> str:
    """12.81B, 524.3M, 3.2k: short counts a person reads at a glance."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.4g}{suffix}"
    return f"{n:g}"


def format_plan(plans: list[StagePlan]) -> str:
    """An aligned table: one row per stage, then the totals."""
    head = ("stage", "px", "tokens/pair", "samples", "steps", "tokens", "GFLOPs/pair", "PFLOPs",
            "acc-hours", "cost $")
    rows = [(p.name, str(p.image_size), f"{p.image_tokens}+{p.text_tokens}", _count(p.samples),
             f"{p.steps:,}", _count(p.tokens), f"{p.step_flops / 1e9:,.1f}", f"{p.flops / 1e15:,.0f}",
             f"{p.hours:,.0f}", f"{p.cost:,.0f}") for p in plans]
    total = ("total", "", "", _count(sum(p.samples for p in plans)), f"{sum(p.steps for p in plans):,}",
             _count(sum(p.tokens for p in plans)), "", f"{sum(p.flops for p in plans) / 1e15:,.0f}",
             f"{sum(p.hours for p in plans):,.0f}", f"{sum(p.cost for p in plans):,.0f}")
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(line(head))
    return "\n".join([line(head), rule, *map(line, rows), rule, line(total)])

"""AdamW with decay on weight matrices only, and a warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import OptimConfig, StageConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D+ weights; exempt gains, biases and the temperature (as OpenCLIP and CLIPA)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: OptimConfig, stage: StageConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=stage.lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        # one kernel over all tensors on CPU and CUDA, and it can skip a step on the device
        # (found_inf), which train/step.py uses for non-finite steps
        fused=True,
    )


def lr_at(step: int, total: int, stage: StageConfig) -> float:
    """Linear warm-up to ``stage.lr`` then cosine decay to ``stage.min_lr`` (or constant)."""
    if stage.warmup > 0 and step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    if stage.schedule == "constant":
        return stage.lr
    span = max(1, total - stage.warmup)
    progress = min(1.0, (step - stage.warmup) / span)
    return stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""AdamW with decoupled weight decay on weight matrices only (the schedule is the stage plan's ``LRSchedule``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import OptimConfig


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


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.AdamW:
    """Fused AdamW over ``model``'s trainable parameters at learning rate ``lr``."""
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        # one kernel over all tensors on CPU and CUDA, and it can skip a step on the device
        # (found_inf), which train/step.py uses for non-finite steps
        fused=True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""Everything the training loop needs to know about processes: who am I, how is the
model wrapped, how are gradients synchronised and checkpoints written.

Single-process runs take the trivial path of every function here.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from .config import TrainConfig
from .train import checkpoint as ckpt


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Read torchrun's environment; a plain ``python`` run is one process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    raise NotImplementedError("multi-process training is not wired yet")


def wrap_model(model: nn.Module, cfg: TrainConfig, dist: DistInfo) -> nn.Module:
    return model


def no_sync_factory(wrapped: nn.Module, dist: DistInfo) -> Callable[[], ContextManager]:
    """A context that skips gradient synchronisation (for all but the last microbatch)."""
    return nullcontext


def clip_grad_norm(wrapped: nn.Module, max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)


def save_checkpoint(root: Path, step: int, wrapped: nn.Module, model: nn.Module, optimizer,
                    state: dict, rng: dict, dist: DistInfo) -> None:
    if dist.is_main:
        ckpt.save_checkpoint(root, step, model.state_dict(), optimizer.state_dict(), state, rng)

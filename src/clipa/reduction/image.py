"""Image token reduction (CLIPA section 1): which patch tokens each sample keeps.

Each rule returns sorted patch indices of shape [B, K] (class token excluded; the vision
tower always keeps it). ``resize`` needs no indices: the stage feeds smaller images.
"""

from __future__ import annotations

import torch

from ..config import ImageReductionConfig


def num_kept(cfg: ImageReductionConfig, num_patches: int) -> int:
    """Kept patch count: an explicit ``keep``, else FLIP's ``max(1, int(N * (1 - ratio)))``."""
    if cfg.keep is not None:
        return max(1, min(cfg.keep, num_patches))
    return max(1, int(num_patches * (1.0 - cfg.ratio)))


def random_indices(b: int, n: int, k: int, device, generator) -> torch.Tensor:
    noise = torch.rand(b, n, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :k].sort(dim=1).values


def keep_indices(
    cfg: ImageReductionConfig,
    batch: int,
    grid: tuple[int, int],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Patch indices to keep for each sample, or None when every patch stays."""
    gh, gw = grid
    n = gh * gw
    if cfg.strategy in ("none", "resize"):
        return None
    if cfg.strategy == "random":
        k = num_kept(cfg, n)
        return None if k >= n else random_indices(batch, n, k, device, generator)
    raise ValueError(f"unknown image reduction strategy {cfg.strategy!r}")

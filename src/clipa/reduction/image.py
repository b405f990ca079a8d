"""Image token reduction (CLIPA; docs/reference.md#image-token-reduction): which patch tokens each sample keeps.

Each rule returns sorted patch indices of shape [B, K] (class token excluded; the vision
tower always keeps it and only asks in training mode). Indices are row-major over the
patch grid and drawn on ``device`` with the trainer's ``generator``.

- ``random``: FLIP's per-sample uniform choice of ``max(1, int(N * (1 - ratio)))`` patches.
- ``grid``: one patch per s x s window (s = 2 by default: 75% removed), at the same place in
  every window; that place is fixed (top left) or drawn per sample (``grid_position``).
- ``block``: one contiguous square of about K patches at a random place per sample.
- ``resize``: no indices; the stage feeds smaller images (``resize_image_size``).

``RULES`` maps each name to its kept count (``num_seen``, for the planner) and its draw
(``keep_indices``); :class:`TokenReduction` is the module the vision tower applies them with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..config import ImageReductionConfig


def num_kept(cfg: ImageReductionConfig, num_patches: int) -> int:
    """Kept patch count: an explicit ``keep``, else FLIP's ``max(1, int(N * (1 - ratio)))``."""
    if cfg.keep is not None:
        return max(1, min(cfg.keep, num_patches))
    return max(1, int(num_patches * (1.0 - cfg.ratio)))


def random_indices(b: int, n: int, k: int, device, generator) -> torch.Tensor:
    noise = torch.rand(b, n, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :k].sort(dim=1).values


def grid_window(cfg: ImageReductionConfig, num_patches: int) -> int:
    """Side s of the windows that each keep one patch: 1/s^2 of the patches stay.

    ``keep`` or ``ratio`` pick s when they say so (keep = N/s^2, ratio = 1 - 1/s^2); with
    neither it is CLIPA's 2 x 2. Other targets raise: the rule cannot meet them.
    """
    if cfg.keep is None and cfg.ratio == 0.0:
        return 2
    frac = cfg.keep / num_patches if cfg.keep is not None else 1.0 - cfg.ratio
    s = round(frac**-0.5) if frac > 0 else 0
    if s < 2 or abs(1.0 / (s * s) - frac) > 1e-3:
        raise ValueError(
            f"grid masking keeps one patch per s x s window, i.e. 1/4, 1/9, ... of the patches "
            f"(ratio 0.75, 0.889, ...); keep={cfg.keep}, ratio={cfg.ratio} of {num_patches} "
            f"patches is not of that form")
    return s


def grid_indices(b: int, gh: int, gw: int, s: int, random_position: bool, device,
                 generator) -> torch.Tensor:
    """One patch per s x s window; windows cut by the grid's edge keep their clipped position."""
    if random_position:
        dy, dx = torch.randint(0, s, (2, b, 1, 1), device=device, generator=generator)
    else:
        dy = dx = torch.zeros(b, 1, 1, dtype=torch.long, device=device)
    rows = torch.arange(0, gh, s, device=device)[None, :, None]
    cols = torch.arange(0, gw, s, device=device)[None, None, :]
    y = (rows + dy).clamp(max=gh - 1)
    x = (cols + dx).clamp(max=gw - 1)
    return (y * gw + x).reshape(b, -1)


def block_side(k: int, gh: int, gw: int) -> int:
    """Side of the square block closest to ``k`` patches that fits the grid."""
    return max(1, min(round(math.sqrt(k)), gh, gw))


def block_indices(b: int, gh: int, gw: int, side: int, device, generator) -> torch.Tensor:
    top = torch.randint(0, gh - side + 1, (b, 1, 1), device=device, generator=generator)
    left = torch.randint(0, gw - side + 1, (b, 1, 1), device=device, generator=generator)
    r = torch.arange(side, device=device)
    return ((top + r[None, :, None]) * gw + left + r[None, None, :]).reshape(b, -1)


def resize_image_size(cfg: ImageReductionConfig, image_size: int, patch_size: int) -> int:
    """Image size whose square patch grid is closest to the kept count (25% of 224/16 -> 112)."""
    g = image_size // patch_size
    side = max(1, round(math.sqrt(num_kept(cfg, g * g))))
    return side * patch_size


def stage_image_size(cfg: ImageReductionConfig, image_size: int | None, base_size: int, patch_size: int) -> int:
    """The resolution a stage trains at: its own, else for ``resize`` the size that meets the
    keep/ratio target, else the model's."""
    if image_size is not None:
        return image_size
    if cfg.strategy == "resize":
        return resize_image_size(cfg, base_size, patch_size)
    return base_size


# ----------------------------------------------------------------------------- rules by name


@dataclass(frozen=True)
class Rule:
    """One strategy: how many patches it keeps on a grid, and how it draws them (None: it
    selects no patches; ``resize`` works through the stage's image size instead)."""

    seen: Callable[[ImageReductionConfig, int, int], int]
    draw: Callable[..., torch.Tensor] | None = None


def _every_patch(cfg: ImageReductionConfig, gh: int, gw: int) -> int:
    return gh * gw


def _random_seen(cfg: ImageReductionConfig, gh: int, gw: int) -> int:
    return num_kept(cfg, gh * gw)


def _random_draw(cfg: ImageReductionConfig, b: int, gh: int, gw: int, device, generator) -> torch.Tensor:
    return random_indices(b, gh * gw, num_kept(cfg, gh * gw), device, generator)


def _grid_seen(cfg: ImageReductionConfig, gh: int, gw: int) -> int:
    s = grid_window(cfg, gh * gw)
    return len(range(0, gh, s)) * len(range(0, gw, s))


def _grid_draw(cfg: ImageReductionConfig, b: int, gh: int, gw: int, device, generator) -> torch.Tensor:
    s = grid_window(cfg, gh * gw)
    return grid_indices(b, gh, gw, s, cfg.grid_position == "random", device, generator)


def _block_seen(cfg: ImageReductionConfig, gh: int, gw: int) -> int:
    return block_side(num_kept(cfg, gh * gw), gh, gw) ** 2


def _block_draw(cfg: ImageReductionConfig, b: int, gh: int, gw: int, device, generator) -> torch.Tensor:
    return block_indices(b, gh, gw, block_side(num_kept(cfg, gh * gw), gh, gw), device, generator)


RULES: dict[str, Rule] = {
    "none": Rule(_every_patch),
    "resize": Rule(_every_patch),
    "random": Rule(_random_seen, _random_draw),
    "grid": Rule(_grid_seen, _grid_draw),
    "block": Rule(_block_seen, _block_draw),
}


def rule(cfg: ImageReductionConfig) -> Rule:
    """The rule ``cfg.strategy`` names; an unknown name lists the valid ones."""
    try:
        return RULES[cfg.strategy]
    except KeyError:
        raise ValueError(f"unknown image reduction strategy {cfg.strategy!r}; "
                         f"choose from {', '.join(RULES)}") from None


def num_seen(cfg: ImageReductionConfig, grid: tuple[int, int]) -> int:
    """Patch tokens per sample the tower sees in training: the width of ``keep_indices``."""
    return rule(cfg).seen(cfg, *grid)


def keep_indices(
    cfg: ImageReductionConfig,
    batch: int,
    grid: tuple[int, int],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Patch indices to keep for each sample [B, K], or None when every patch stays."""
    r, (gh, gw) = rule(cfg), grid
    if r.draw is None or r.seen(cfg, gh, gw) >= gh * gw:
        return None
    return r.draw(cfg, batch, gh, gw, device, generator)


def gather_patches(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """[B, N, W] -> [B, K, W]: each sample's patches at ``idx`` [B, K] (all of them for None)."""
    if idx is None:
        return x
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


class TokenReduction(nn.Module):
    """Drops patch tokens in training, as OpenCLIP's ``PatchDropout``: [B, N, W] -> [B, K, W].

    The vision tower owns one (``set_token_reduction``) and calls it between the position
    embedding and the blocks, class token excluded. In eval mode, or when the rule keeps every
    patch, tokens pass through untouched. The generator is state, not a forward argument, so
    the big-batch step can save and replay it and the call signature stays tensor-only.
    """

    def __init__(self, cfg: ImageReductionConfig | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg or ImageReductionConfig()
        rule(self.cfg)  # an unknown strategy fails here, not at the first training step
        self.generator = generator

    def indices(self, batch: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        """The patches each sample keeps [B, K], or None (eval mode, or every patch stays).
        The draw reads the generator, which a compiled graph cannot: the vision tower calls
        this outside its compiled part and passes the indices in."""
        if not self.training:
            return None
        return keep_indices(self.cfg, batch, grid, device, self.generator)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return gather_patches(x, self.indices(x.shape[0], grid, x.device))

    def extra_repr(self) -> str:
        c = self.cfg
        return f"strategy={c.strategy!r}, ratio={c.ratio}, keep={c.keep}, grid_position={c.grid_position!r}"

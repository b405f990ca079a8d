"""Position embeddings: the fixed 2-D sin-cos table and the resampling used everywhere
a grid or context length changes (checkpoint loading, stage changes, the resize strategy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """MAE/OpenCLIP 2-D sin-cos table of shape [(cls) + H*W, dim]; the class row is zero."""
    gh = torch.arange(grid_h, dtype=torch.float64)
    gw = torch.arange(grid_w, dtype=torch.float64)
    w, h = torch.meshgrid(gw, gh, indexing="xy")  # as numpy.meshgrid(grid_w, grid_h)
    emb = torch.cat([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_grid(pos: torch.Tensor, new_hw: tuple[int, int], num_prefix: int = 1,
                  antialias: bool = False) -> torch.Tensor:
    """Bicubic resampling of a learned [prefix + H*W, D] table to a new square-ish grid.
    ``antialias`` is OpenCLIP's ``resize_pos_embed`` (torch's antialiased bicubic, PIL's
    kernel), used where weights are loaded at another resolution."""
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    old = int(round(grid.shape[0] ** 0.5))
    if old * old != grid.shape[0]:
        raise ValueError(f"position table of {grid.shape[0]} rows is not a square grid")
    if (old, old) == tuple(new_hw):
        return pos
    g = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=new_hw, mode="bicubic", align_corners=False, antialias=antialias)
    g = g.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], -1).to(pos.dtype)
    return torch.cat([prefix, g], dim=0)


def resample_1d(pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of a text position table [L, D] to ``length`` rows."""
    if pos.shape[0] == length:
        return pos
    p = pos.T[None].float()
    p = F.interpolate(p, size=length, mode="linear", align_corners=False)
    return p[0].T.to(pos.dtype).contiguous()

"""Image tower: patchify -> position embedding -> token reduction -> blocks -> pool -> project."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ImageReductionConfig, VisionConfig
from ..reduction.image import keep_indices
from .pos_embed import resample_grid, sincos_2d
from .transformer import Transformer


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        w, p, g = cfg.width, cfg.patch_size, cfg.grid_size
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        if cfg.pos_embed == "sincos":
            self.positional_embedding = nn.Parameter(sincos_2d(w, g, g), requires_grad=False)
        else:
            self.positional_embedding = nn.Parameter(scale * torch.randn(g * g + 1, w))
        self.ln_pre = nn.LayerNorm(w) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))
        # Token reduction (CLIPA): set per stage by the trainer, applied in training mode only.
        self.reduction: ImageReductionConfig | None = None
        self.generator: torch.Generator | None = None

    def set_image_size(self, image_size: int) -> None:
        """Move the model to a new resolution: resample a learned table, recompute sin-cos."""
        g = image_size // self.cfg.patch_size
        with torch.no_grad():
            pos = self._pos_for_grid(g, g)
        self.positional_embedding = nn.Parameter(
            pos.detach().clone(), requires_grad=self.positional_embedding.requires_grad
        )
        self.cfg.image_size = image_size

    def _pos_for_grid(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.positional_embedding
        if pos.shape[0] == gh * gw + 1:
            return pos
        if self.cfg.pos_embed == "sincos":
            return sincos_2d(self.cfg.width, gh, gw).to(pos)
        return resample_grid(pos, (gh, gw))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images.to(self.conv1.weight.dtype))
        b, w, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, N, W]
        pos = self._pos_for_grid(gh, gw).to(x.dtype)
        x = x + pos[1:]
        if self.training and self.reduction is not None:
            idx = keep_indices(self.reduction, b, (gh, gw), x.device, self.generator)
            if idx is not None:
                x = x.gather(1, idx[:, :, None].expand(-1, -1, w))
        cls = (self.class_embedding + pos[0]).to(x.dtype).expand(b, 1, w)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        if self.cfg.pool == "avg":
            if self.cfg.final_ln_after_pool:
                pooled = self.ln_post(x[:, 1:].mean(dim=1))
            else:
                pooled = self.ln_post(x)[:, 1:].mean(dim=1)
        else:
            pooled = self.ln_post(x[:, 0])
        return pooled @ self.proj

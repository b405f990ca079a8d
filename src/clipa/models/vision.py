"""Image tower: patchify -> position embedding -> token reduction -> blocks -> pool -> project.

The tower's current resolution (``image_size``) and token reduction are its own state, set
through ``set_image_size`` and ``set_token_reduction``; its ``cfg`` stays the model's config.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ImageReductionConfig, VisionConfig
from ..reduction.image import TokenReduction, gather_patches
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
        self.image_size = cfg.image_size
        self.token_reduction = TokenReduction()  # keeps every patch until a stage sets a rule

    def set_image_size(self, image_size: int) -> None:
        """Move the tower to a new resolution: resample a learned table, recompute sin-cos."""
        g = image_size // self.cfg.patch_size
        with torch.no_grad():
            pos = self._pos_for_grid(g, g)
        self.positional_embedding = nn.Parameter(
            pos.detach().clone(), requires_grad=self.positional_embedding.requires_grad
        )
        self.image_size = image_size

    def set_token_reduction(self, cfg: ImageReductionConfig | None,
                            generator: torch.Generator | None = None) -> None:
        """Drop patch tokens in training by ``cfg`` (None: keep all), drawing from ``generator``,
        which must live on the tower's device."""
        self.token_reduction = TokenReduction(cfg, generator).train(self.training)

    def _pos_for_grid(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.positional_embedding
        if pos.shape[0] == gh * gw + 1:
            return pos
        if self.cfg.pos_embed == "sincos":
            return sincos_2d(self.cfg.width, gh, gw).to(pos)
        return resample_grid(pos, (gh, gw))

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Patch tokens with their positions, the class token with its own, and the patch grid."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, W, gh, gw]
        gh, gw = x.shape[-2:]
        pos = self._pos_for_grid(gh, gw).to(x.dtype)  # [1 + gh * gw, W]
        patches = x.flatten(2).transpose(1, 2) + pos[1:]  # [B, N, W]
        cls = (self.class_embedding + pos[0]).to(x.dtype)  # [W]
        return patches, cls, (gh, gw)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K, W] -> [B, W]: the class token, or the mean of the patch tokens."""
        if self.cfg.pool != "avg":
            return self.ln_post(x[:, 0])
        if self.cfg.final_ln_after_pool:
            return self.ln_post(x[:, 1:].mean(dim=1))
        return self.ln_post(x)[:, 1:].mean(dim=1)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the tower in place (its state dict keeps its keys): all of it but the
        draw of the kept patches, so every token reduction strategy is one graph."""
        self._encode = torch.compile(self._encode, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        # drawn here, outside what compile() compiles: a torch.Generator cannot enter a graph
        keep = self.token_reduction.indices(images.shape[0], grid, images.device)  # [B, K] or None
        return self._encode(images, keep)

    def _encode(self, images: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        patches, cls, _ = self._embed(images)  # [B, N, W], [W]
        patches = gather_patches(patches, keep)  # [B, K, W]; K = N outside training
        b, _, w = patches.shape
        x = self.ln_pre(torch.cat([cls.expand(b, 1, w), patches], dim=1))  # [B, 1 + K, W]
        x = self.transformer(x)
        return self._pool(x) @ self.proj  # [B, E]

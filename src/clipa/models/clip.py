"""The CLIP model: two towers and a learnable temperature, in OpenCLIP's weight layout."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .text import TextTower
from .vision import VisionTransformer


class CLIP(TextTower):
    """OpenCLIP keeps the text tower's weights at the top level of the model; inheriting
    from ``TextTower`` gives the same state_dict keys with no remapping."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.text, cfg.embed_dim)
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.visual.transformer.init_weights()
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the losses take, so a step is ``loss_fn(*model(images, text))``: normalised
        image and text embeddings, the log-temperature t (unclamped: the InfoNCE losses cap
        exp(t) at 100 and the trainer clamps the parameter after each step) and SigLIP's
        bias (None without one). OpenCLIP returns exp(t) instead; ``encode_image`` and
        ``encode_text`` are OpenCLIP's."""
        img = self.encode_image(images, normalize=True)
        txt = self.encode_text(text, normalize=True)
        # Copies, not the parameters: FSDP2 hooks every output that needs a gradient, and a
        # hook put on a parameter would stay there (one more each step).
        bias = None if self.logit_bias is None else self.logit_bias.clone()
        return img, txt, self.logit_scale.clone(), bias

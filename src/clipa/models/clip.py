"""The CLIP model: two towers and a learnable temperature, in OpenCLIP's weight layout."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .text import TextTower
from .vision import VisionTransformer


class CLIP(TextTower):
    """OpenCLIP keeps the text tower's weights at the top level of the model; inheriting
    from ``TextTower`` gives the same state_dict keys with no remapping.

    Initialisation is OpenCLIP's: the text tower's blocks by CLIP's depth- and width-scaled
    rule, the image tower's blocks at PyTorch's defaults (OpenCLIP never initialises them).
    ``cfg`` is the model's config as built, its preprocessing included; the towers may since
    have moved to a stage's image size and text length (:meth:`current_config` has those)."""

    def __init__(self, cfg: ModelConfig, output_dict: bool = False):
        super().__init__(cfg.text, cfg.embed_dim)
        self.cfg = cfg
        self.output_dict = output_dict  # forward returns a dict (OpenCLIP's output_dict)
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def current_config(self) -> ModelConfig:
        """``cfg`` at the image size and text length the towers have now (what an export states)."""
        vision = dataclasses.replace(self.cfg.vision, image_size=self.visual.image_size)
        text = dataclasses.replace(self.cfg.text, context_length=self.context_length)
        return dataclasses.replace(self.cfg, vision=vision, text=text)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...] | dict[str, torch.Tensor | None]:
        """OpenCLIP's forward: ``(image_features, text_features, logit_scale.exp())``, with the
        bias fourth for a model that has one (SigLIP), or with ``output_dict`` the same as a dict
        under OpenCLIP's keys. Features are L2-normalised; a tower given None returns None.
        The losses take exactly this (``loss_fn(*model(images, text))``); the temperature's cap
        at 100 is kept on the parameter (``TrainStep`` clamps it), as OpenCLIP's training does."""
        out = {"image_features": None if image is None else self.encode_image(image, normalize=True),
               "text_features": None if text is None else self.encode_text(text, normalize=True),
               "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            # A copy where OpenCLIP returns the parameter: FSDP2 hooks every output that needs a
            # gradient, and a hook put on a parameter would stay there (one more each step).
            out["logit_bias"] = self.logit_bias.clone()
        return out if self.output_dict else tuple(out.values())

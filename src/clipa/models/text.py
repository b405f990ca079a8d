"""Text tower: embed -> blocks -> final LayerNorm -> pool -> project."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TextConfig
from .pos_embed import resample_1d
from .transformer import Transformer


class TextTower(nn.Module):
    """Attribute names are OpenCLIP's, which keeps this tower at the top of the CLIP model."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.text_cfg = cfg
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act)
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.empty(w, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w**-0.5)
        self.transformer.init_weights()

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def set_context_length(self, length: int) -> None:
        """Resample the position table (linear) when a stage changes the text length; the
        table's length is the tower's context length (``text_cfg`` keeps the model's)."""
        with torch.no_grad():
            pos = resample_1d(self.positional_embedding.detach(), length).clone()
        self.positional_embedding = nn.Parameter(pos)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        n = text.shape[1]
        if n > self.context_length:
            raise ValueError(f"text of {n} tokens exceeds the context length {self.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:n]
        x = self.transformer(x, causal=self.text_cfg.causal)
        x = self.ln_final(x)
        pool = self.text_cfg.pool
        if pool == "argmax":  # end-of-text has the highest id in the CLIP vocabulary
            x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        elif pool == "last":
            x = x[:, -1]
        else:
            x = x[:, 0]
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

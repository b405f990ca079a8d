"""Analytic FLOPs of a CLIP model per image-text pair, for the forward pass and a training step.

Counting convention (the one behind OpenCLIP's published table,
https://github.com/mlfoundations/open_clip/blob/main/docs/model_profile.csv, made with
``torch.utils.flop_counter.FlopCounterMode``): only matrix products count, a multiply-add is 2
FLOPs. That is the patch embedding (a stride-P convolution), every linear layer (qkv, out,
MLP), the two attention products q@k^T and p@v over the full square (a causal mask saves nothing
in this count, as in ``FlopCounterMode``), and the two output projections. Layer norms,
softmax, activations, embedding lookups and the pooling are left out (each is O(tokens x width),
well under 1% at these sizes). The contrastive logits (2·B·E per pair for a global batch B) are
left out too: under 0.5% at B = 64k.

A training step is counted as forward + backward, the backward being twice the forward (a
gradient for the input and one for the weight of every product), less the patch embedding's
input gradient, which nothing needs. This equals ``FlopCounterMode`` on a forward + backward
with the math attention kernel; flash-attention kernels recompute q@k^T in the backward, so
their step does 0.5x the attention forward more.

Image tokens: the class token plus the kept patches. Token reduction drops patches after the
patch embedding, so the embedding always runs over the whole grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, TextConfig, VisionConfig


@dataclass(frozen=True)
class PairFlops:
    """FLOPs per image-text pair, split by tower; ``patch_embed`` is part of ``image``."""

    image: float
    text: float
    patch_embed: float
    image_tokens: int  # sequence length in the image transformer (class token included)
    text_tokens: int

    @property
    def forward(self) -> float:
        return self.image + self.text

    @property
    def train_step(self) -> float:
        return 3 * self.forward - self.patch_embed


def transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    """Pre-LN transformer blocks: qkv + out projections, the MLP and full-square attention."""
    hidden = int(width * mlp_ratio)  # as the model builds it
    per_token = 2 * (4 * width * width + 2 * width * hidden)
    attention = 2 * 2 * tokens * tokens * width  # q @ k^T and p @ v, summed over heads
    return layers * (tokens * per_token + attention)


def grid_side(image_size: int, patch_size: int, what: str = "image size") -> int:
    """Patches per side. A size the patch does not divide is refused: the patch embedding would
    silently drop the right and bottom edges, so the count would be for a smaller image."""
    if image_size <= 0 or image_size % patch_size:
        below = image_size // patch_size * patch_size
        nearest = f"{below} or {below + patch_size}" if below else f"{patch_size}"
        raise ValueError(f"{what} {image_size} px is not a positive multiple of the patch size "
                         f"{patch_size} (nearest: {nearest} px)")
    return image_size // patch_size


def check_text_length(text_length: int, context_length: int, what: str = "text length") -> int:
    """A text length the model can take: 2 (start and end tokens) up to its context length."""
    if not 2 <= text_length <= context_length:
        raise ValueError(f"{what} {text_length} is outside 2..{context_length} (the model's context length)")
    return text_length


def image_flops(cfg: VisionConfig, embed_dim: int, image_size: int | None = None,
                patches: int | None = None) -> tuple[float, float, int]:
    """(forward FLOPs, of which patch embedding, sequence length) of the image tower.

    ``patches`` is the number of patch tokens kept (default: the whole grid)."""
    grid = grid_side(image_size or cfg.image_size, cfg.patch_size)
    n = grid * grid
    kept = n if patches is None else min(patches, n)
    patch_embed = 2.0 * n * (3 * cfg.patch_size**2) * cfg.width
    tokens = kept + 1  # the class token stays in the sequence even when pooling is "avg"
    body = transformer_flops(tokens, cfg.width, cfg.layers, cfg.mlp_ratio)
    return patch_embed + body + 2.0 * cfg.width * embed_dim, patch_embed, tokens


def text_flops(cfg: TextConfig, embed_dim: int, text_length: int | None = None) -> tuple[float, int]:
    """(forward FLOPs, sequence length) of the text tower; pooled before the projection."""
    tokens = check_text_length(text_length or cfg.context_length, cfg.context_length)
    body = transformer_flops(tokens, cfg.width, cfg.layers, cfg.mlp_ratio)
    return body + 2.0 * cfg.width * embed_dim, tokens


def pair_flops(cfg: ModelConfig, image_size: int | None = None, image_patches: int | None = None,
               text_length: int | None = None) -> PairFlops:
    """FLOPs per image-text pair at a given resolution, kept patch count and text length."""
    img, patch, img_tokens = image_flops(cfg.vision, cfg.embed_dim, image_size, image_patches)
    txt, txt_tokens = text_flops(cfg.text, cfg.embed_dim, text_length)
    return PairFlops(img, txt, patch, img_tokens, txt_tokens)

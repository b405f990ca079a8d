"""Image-text retrieval recall@k as in CLIP papers and CLIP_benchmark.

Each image has one or more captions. ``image_retrieval_recall@k``: the fraction of captions
whose image is among the k images scored highest for it; ``text_retrieval_recall@k``: the
fraction of images with at least one of their captions among the k captions scored highest.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

from .features import encode_images, encode_texts


def retrieval_metrics(
    scores: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k from text-image scores [T, I] and each caption's image index [T]."""
    n_text, n_img = scores.shape
    image_ids = torch.arange(n_img)
    out = {}
    for k in ks:
        top_images = scores.topk(min(k, n_img), dim=1).indices  # [T, k]
        out[f"image_retrieval_recall@{k}"] = (top_images == text_to_image[:, None]).any(1).float().mean().item()
        top_texts = scores.T.topk(min(k, n_text), dim=1).indices  # [I, k]
        hit = text_to_image[top_texts] == image_ids[:, None]
        out[f"text_retrieval_recall@{k}"] = hit.any(1).float().mean().item()
    return out


def evaluate_retrieval(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, Sequence[Sequence[str]]]],
    device: str | torch.device,
    ks: Sequence[int] = (1, 5, 10),
    text_batch_size: int = 256,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
    total: int | None = None,
) -> dict[str, float]:
    """Recall@k over ``(images, captions per image)`` batches."""
    img, caption_lists = encode_images(model, batches, device, dtype, show_progress, "retrieval", total)
    captions = [list(c) for batch in caption_lists for c in batch]
    if len(captions) != len(img):
        raise ValueError(f"{len(img)} images but {len(captions)} caption lists")
    texts = [t for cs in captions for t in cs]
    owner = torch.tensor([i for i, cs in enumerate(captions) for _ in cs])
    if not texts:
        raise ValueError("retrieval needs at least one caption")
    txt = encode_texts(model, tokenizer, texts, device, text_batch_size, dtype, show_progress).cpu()
    return retrieval_metrics(txt @ img.T, owner, ks)

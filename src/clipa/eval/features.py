"""Embedding helpers shared by every evaluator: batched, no-grad, L2-normalised."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm


def autocast(device: str | torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` (the runtime's; ``clipa.runtime.Runtime.dtype``), or fp32 for None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def progress(items: Iterable, desc: str, show: bool, total: int | None = None) -> Iterable:
    return tqdm(items, desc=desc, total=total, unit="batch", leave=False, dynamic_ncols=True) if show else items


@torch.no_grad()
def encode_texts(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    device: str | torch.device,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """L2-normalised text embeddings [N, E] (float32, on ``device``), in the order given."""
    chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    out = []
    for chunk in progress(chunks, "text", show_progress):
        tokens = tokenizer(list(chunk)).to(device)
        with autocast(device, dtype):
            out.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def encode_images(
    model: Any,
    batches: Iterable[tuple[torch.Tensor, Any]],
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
    desc: str = "images",
    total: int | None = None,
) -> tuple[torch.Tensor, list[Any]]:
    """L2-normalised image embeddings [N, E] (float32, CPU) and the batches' second items, in order."""
    feats, extras = [], []
    for images, extra in progress(batches, desc, show_progress, total):
        with autocast(device, dtype):
            emb = model.encode_image(images.to(device))
        feats.append(F.normalize(emb.float(), dim=-1).cpu())
        extras.append(extra)
    if not feats:
        raise ValueError("no images to evaluate (empty data set or shard pattern?)")
    return torch.cat(feats), extras

"""Zero-shot classification, with CLIP_benchmark's definitions of the metrics.

The classifier is one unit vector per class: every template filled with the class name,
each text embedding L2-normalised, averaged per class and renormalised (OpenAI CLIP,
OpenCLIP and CLIP_benchmark all do this); logits are ``100 * image @ classifier``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.nn.functional as F

from .features import encode_images, encode_texts

Template = Union[str, Callable[[str], str]]


def fill(template: Template, classname: str) -> str:
    """``"a photo of a {c}."`` (CLIP_benchmark's text files) or a callable (OpenCLIP's metadata)."""
    return template(classname) if callable(template) else template.format(c=classname)


def build_classifier(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Zero-shot weights [E, C] on ``device``: column c is class c's averaged prompt embedding."""
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    texts = [fill(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device, batch_size, dtype, show_progress)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Fraction of rows whose true class is among the k highest logits (ties as ``torch.topk``)."""
    pred = logits.topk(k, dim=1).indices
    return (pred == target[:, None]).any(dim=1).sum().item() / len(target)


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Recall averaged over the classes present in ``target`` (sklearn's balanced accuracy)."""
    recalls = [(pred[target == c] == c).double().mean() for c in target.unique()]
    return torch.stack(recalls).mean().item()


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN with fewer than 5 classes, as CLIP_benchmark) and ``mean_per_class_recall``."""
    target = target.long()
    return {
        "acc1": topk_accuracy(logits, target, 1),
        "acc5": topk_accuracy(logits, target, 5) if logits.shape[1] >= 5 else math.nan,
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), target),
    }


def evaluate_classification(
    model: Any,
    classifier: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
    total: int | None = None,
) -> dict[str, float]:
    """Zero-shot top-1 / top-5 accuracy and mean per-class recall over ``(images, labels)`` batches."""
    feats, labels = encode_images(model, batches, device, dtype, show_progress, "zero-shot", total)
    logits = 100.0 * feats @ classifier.float().cpu()
    return classification_metrics(logits, torch.cat([torch.as_tensor(y) for y in labels]))

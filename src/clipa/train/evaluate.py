"""Evaluation hooks of the training loop: the built-in digits zero-shot, or the configured sets."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..models import CLIP


def evaluate_digits(model: CLIP, device: torch.device | str, batch_size: int = 256) -> dict:
    """Zero-shot top-1/top-5 on the held-out digits, with prompts never used in training."""
    from ..data.digits import CLASSNAMES, EVAL_TEMPLATES, eval_split
    from ..eval.zeroshot import build_classifier, evaluate_classification
    from ..tokenizer import tokenizer_for

    was_training = model.training
    model.eval()
    tokenizer = tokenizer_for(model)
    images, labels = eval_split(model.visual.image_size)
    classifier = build_classifier(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, device)
    batches = ((images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size))
    metrics = evaluate_classification(model, classifier, batches, device)
    model.train(was_training)
    return {**metrics, "samples": {"scored": len(labels), "skipped": {}}}


def evaluate_during_training(model: CLIP, cfg: RunConfig, device: torch.device) -> dict:
    """Metrics for the results log: digits when training on them, else ``cfg.eval.data``."""
    if cfg.eval.data is None:
        if cfg.data.source == "digits":
            return evaluate_digits(model, device, cfg.eval.batch_size)
        return {}
    from ..eval.runner import run_evals
    from ..tokenizer import tokenizer_for

    return run_evals(model, tokenizer_for(model), cfg.eval, device)  # evaluate_set switches to eval mode


def describe_scored(metrics: dict) -> str:
    """" on 360 images" (", 1,800 captions", "; 2,000 of 10,000 samples, evenly spaced ..."):
    what an evaluation's figures were measured on, for the training log."""
    samples = metrics.get("samples")
    if not isinstance(samples, dict) or "scored" not in samples:
        return ""
    text = f" on {samples['scored']:,} images"
    if samples.get("captions") is not None:
        text += f", {samples['captions']:,} captions"
    if skipped := sum(samples.get("skipped", {}).values()):
        text += f" ({skipped:,} skipped)"
    return text + (f"; {samples['drawn']}" if samples.get("drawn") else "")

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
    return metrics


def evaluate_during_training(model: CLIP, cfg: RunConfig, device: torch.device) -> dict:
    """Metrics for the results log: digits when training on them, else ``cfg.eval.data``."""
    if cfg.eval.data is None:
        if cfg.data.source == "digits":
            return evaluate_digits(model, device, cfg.eval.batch_size)
        return {}
    from ..eval.runner import run_evals
    from ..tokenizer import tokenizer_for

    return run_evals(model, tokenizer_for(model), cfg.eval, device)  # evaluate_set switches to eval mode

"""Evaluation hooks of the training loop: the built-in digits zero-shot, or the configured sets."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..models import CLIP


def evaluate_digits(model: CLIP, device: torch.device | str, batch_size: int = 256,
                    amp: bool | torch.dtype = False) -> dict:
    """Zero-shot top-1/top-5 on the held-out digits, with prompts never used in training,
    under autocast ``amp`` (the run's dtype, or False)."""
    from ..data.digits import CLASSNAMES, EVAL_TEMPLATES, eval_split
    from ..eval.zeroshot import build_classifier, evaluate_classification
    from ..tokenizer import tokenizer_for

    was_training = model.training
    model.eval()
    tokenizer = tokenizer_for(model)
    images, labels = eval_split(model.visual.image_size)
    classifier = build_classifier(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, device, amp=amp)
    batches = ((images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size))
    metrics = evaluate_classification(model, classifier, batches, device, amp)
    model.train(was_training)
    return metrics


def evaluate_during_training(model: CLIP, cfg: RunConfig, device: torch.device,
                             dtype: torch.dtype | None = None) -> dict:
    """Metrics for the results log: digits when training on them, else ``cfg.eval.data``,
    read by the run's loader workers. ``dtype`` is the run's autocast dtype (None: fp32)."""
    amp = dtype if dtype is not None else False
    if cfg.eval.data is None:
        if cfg.data.source == "digits":
            return evaluate_digits(model, device, cfg.eval.batch_size, amp)
        if cfg.data.source == "world":
            from ..eval.world import evaluate_world
            from ..tokenizer import tokenizer_for

            return evaluate_world(model, tokenizer_for(model), device, cfg.eval.batch_size)
        return {}
    from ..eval.runner import run_evals
    from ..tokenizer import tokenizer_for

    # evaluate_set switches to eval mode
    return run_evals(model, tokenizer_for(model), cfg.eval, device, workers=cfg.data.workers, amp=amp)

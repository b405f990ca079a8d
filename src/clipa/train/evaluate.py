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
    return {**metrics, "samples": {"scored": len(labels), "skipped": {}}}


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


def check_evaluation(cfg: RunConfig, image_size: int) -> None:
    """Open ``cfg.eval.data`` and read its first sample: a wrong path or layout fails before
    training starts rather than at the first evaluation, after a stage of work."""
    if cfg.eval.data is None:
        return
    from ..data.eval_sets import open_data

    evalset = open_data(cfg.eval.data, image_size, max_samples=cfg.eval.max_samples)
    if next(iter(evalset.dataset), None) is None:
        raise ValueError(f"eval.data={cfg.eval.data}: the evaluation set holds no samples")



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

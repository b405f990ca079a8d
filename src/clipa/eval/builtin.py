"""The held-out evaluations of the built-in data sources (``data.builtin.BUILT_IN`` names them).

Each takes the same :class:`~.runner.EvalOptions` as any other evaluation: the runtime's
device and precision, the batch size and ``max_samples`` (evenly spaced over the set, as for
sets on disk), and reports what it scored under ``"samples"``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..data.eval_sets import Tally, describe_subset, spread
from ..data.transforms import normalise
from .runner import EvalOptions
from .zeroshot import build_classifier, evaluate_classification


def evaluate_digits(model: Any, tokenizer: Callable, options: EvalOptions) -> dict:
    """Zero-shot top-1/top-5 on the held-out digits, with prompts never used in training; the
    images normalised by the model's own preprocessing."""
    from ..data.digits import CLASSNAMES, EVAL_TEMPLATES, eval_split

    rt, size = options.runtime, options.batch_size
    was_training = model.training
    model.eval()
    images, labels = eval_split(model.visual.image_size)  # uint8 [N, 3, S, S], [N]
    total, keep = len(labels), spread(len(labels), options.max_samples)
    images, labels = images[keep], labels[keep]
    images = normalise(images, model.cfg.preprocess.mean, model.cfg.preprocess.std)
    classifier = build_classifier(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, rt.device, size, rt.dtype)
    batches = ((images[i:i + size], labels[i:i + size]) for i in range(0, len(labels), size))
    metrics = evaluate_classification(model, classifier, batches, rt.device, rt.dtype)
    model.train(was_training)
    return {**metrics, "samples": Tally(scored=len(labels)).record(describe_subset(len(keep), total))}


def evaluate_world(model: Any, tokenizer: Callable, options: EvalOptions) -> dict:
    """The world's zero-shot tasks and retrieval on its held-out scenes (``eval.world``)."""
    from .world import evaluate_world as world_tasks

    rt = options.runtime
    return world_tasks(model, tokenizer, rt.device, options.batch_size, rt.dtype, options.max_samples)

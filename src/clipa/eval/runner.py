"""Run evaluations: one task on one data set (:func:`evaluate_set`), what a run evaluates
(:func:`evaluate_run`, during training and under ``clipa eval RUN``), and the results as
CLIP_benchmark writes them, with how many samples were scored and how many skipped (by reason).

Every evaluation takes one :class:`EvalOptions`: the runtime (device, precision, loader
workers) and the evaluation's own settings, resolved once by the caller.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import EvalConfig
from ..data.builtin import built_in
from ..data.eval_sets import EvalSet, Tally, batches, num_batches, open_data
from ..data.transforms import build_eval_transform
from ..runtime import Runtime
from .features import encode_images
from .linear_probe import holdout_split, linear_probe
from .retrieval import evaluate_retrieval
from .zeroshot import build_classifier, evaluate_classification

log = logging.getLogger("clipa.eval")

TASKS = ("zeroshot", "retrieval", "linear-probe")
# CLIP_benchmark's task names in its result files.
BENCHMARK_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                  "linear-probe": "linear_probe"}


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs: the same for training-time evaluation and ``clipa eval``."""

    runtime: Runtime
    """Device, autocast dtype and loader workers (``clipa.runtime.resolve_runtime``)."""
    batch_size: int = 256
    """Images (and texts) per batch."""
    max_samples: int | None = None
    """Score at most this many samples per set, evenly spaced over it; None: all."""
    recall_k: tuple[int, ...] = (1, 5, 10)
    """Retrieval: the k of recall@k."""
    show_progress: bool = False
    """Progress bars."""

    @classmethod
    def during_training(cls, runtime: Runtime, cfg: EvalConfig) -> EvalOptions:
        """A training run's evaluation: its runtime, ``eval.batch_size`` and ``eval.max_samples``."""
        return cls(runtime, cfg.batch_size, cfg.max_samples)


def default_task(evalset: EvalSet) -> str:
    return "retrieval" if evalset.kind == "retrieval" else "zeroshot"


def eval_transform(model: Any) -> Callable:
    """The model's own evaluation transform: its image size, its preprocessing."""
    return build_eval_transform(model.visual.image_size, model.cfg.preprocess)


def _features(model, evalset: EvalSet, tally: Tally, options: EvalOptions):
    rt = options.runtime
    feats, labels = encode_images(model, batches(evalset, options.batch_size, rt.workers, tally), rt.device,
                                  rt.dtype, options.show_progress, f"{evalset.name} features",
                                  num_batches(evalset, options.batch_size))
    return feats, torch.cat([torch.as_tensor(y) for y in labels])


def _report(name: str, tally: Tally) -> None:
    """A damaged set never shortens an evaluation silently: say what was skipped."""
    if tally.skipped:
        log.warning("%s: %s", name, tally)


def evaluate_set(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    evalset: EvalSet,
    task: str,
    options: EvalOptions,
    train_set: EvalSet | None = None,
    probe_train_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ``task`` on ``evalset``, under CLIP_benchmark's metric names, and under
    ``"samples"`` how many were scored and skipped (``{"scored": n, "skipped": {reason: n}}``,
    with ``"captions"`` for retrieval and ``"drawn"`` saying how a ``max_samples`` subset was
    drawn); :func:`result_record` moves that entry beside the metrics."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    want = "retrieval" if task == "retrieval" else "classification"
    if evalset.kind != want:
        raise ValueError(f"{evalset.name} is a {evalset.kind} data set; task {task!r} needs {want} data")
    was_training = model.training
    model.eval()
    tally = Tally()
    try:
        metrics = _evaluate(model, tokenizer, evalset, task, tally, options, train_set, probe_train_fraction, seed)
    finally:
        model.train(was_training)
    _report(evalset.name, tally)
    return {**metrics, "samples": tally.record(evalset.drawn)}


def _evaluate(model, tokenizer, evalset: EvalSet, task: str, tally: Tally, options: EvalOptions,
              train_set: EvalSet | None, probe_train_fraction: float, seed: int) -> dict[str, float]:
    rt, size, show = options.runtime, options.batch_size, options.show_progress
    if task == "zeroshot":
        clf = build_classifier(model, tokenizer, evalset.classnames, evalset.templates, rt.device, size, rt.dtype,
                               show)
        return evaluate_classification(model, clf, batches(evalset, size, rt.workers, tally), rt.device, rt.dtype,
                                       show, num_batches(evalset, size))
    if task == "retrieval":
        return evaluate_retrieval(model, tokenizer, batches(evalset, size, rt.workers, tally), rt.device,
                                  options.recall_k, size, rt.dtype, show, num_batches(evalset, size))
    x, y = _features(model, evalset, tally, options)
    if train_set is not None:
        train_tally = Tally()
        tx, ty = _features(model, train_set, train_tally, options)
        _report(train_set.name + " (linear-probe training split)", train_tally)
    else:  # no training split: a stratified hold-out of the evaluation set
        tr, te = holdout_split(y, probe_train_fraction, seed)
        tx, ty, x, y = x[tr], y[tr], x[te], y[te]
    return linear_probe(tx, ty, x, y, num_classes=len(evalset.classnames or []) or None, seed=seed,
                        show_progress=show)


def evaluate_run(model: Any, tokenizer: Callable[[list[str]], torch.Tensor], source: str, eval_data: str | None,
                 options: EvalOptions) -> tuple[str, str, dict[str, Any]] | None:
    """What a run evaluates, as (data set name, task, metrics): ``eval_data`` (``eval.data``) with
    its default task, else the held-out evaluation of a built-in training ``source``; None when
    the run has neither. The one path of training-time evaluation and ``clipa eval RUN``."""
    if eval_data is not None:
        evalset = open_data(eval_data, eval_transform(model), max_samples=options.max_samples)
        task = default_task(evalset)
        return evalset.name, task, evaluate_set(model, tokenizer, evalset, task, options)
    builtin = built_in(source)
    if builtin is None:
        return None
    metrics = builtin.load("evaluate")(model, tokenizer, options)
    return builtin.name, "zeroshot", metrics


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


def result_record(dataset: str, task: str, metrics: dict[str, Any], model: str, pretrained: str) -> dict:
    """One result file's content, in CLIP_benchmark's layout (NaN written as null), plus
    ``"samples"`` (scored and skipped, from :func:`evaluate_set`) when the metrics carry it."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items() if k != "samples"}
    record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": BENCHMARK_TASK[task],
              "metrics": clean, "language": "en"}
    if "samples" in metrics:
        record["samples"] = metrics["samples"]
    return record


def write_result(path: str | Path, record: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def format_table(records: Sequence[dict]) -> str:
    """A terminal table: one row per data set, task and metric; rates in percent with a "%" sign
    (the JSON records keep CLIP_benchmark's fractions of 1), then the images (and captions)
    scored and skipped, and how a subset was drawn."""
    rows = [("dataset", "task", "metric", "value")]
    notes = []
    for r in records:
        for k, v in r["metrics"].items():
            value = ("n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if k == "C"
                     else f"{100 * v:.2f}%")
            rows.append((r["dataset"], r["task"], k, value))
        samples = r.get("samples", {})
        counts = [("images", samples.get("scored")), ("captions", samples.get("captions")),
                  ("skipped", sum(samples.get("skipped", {}).values()) if "skipped" in samples else None)]
        rows += [(r["dataset"], r["task"], k, f"{v:,}") for k, v in counts if v is not None]
        if samples.get("drawn"):
            notes.append(f"{r['dataset']}: {samples['drawn']}")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *notes, "(rates in %; the JSON result files hold them as fractions of 1)"])

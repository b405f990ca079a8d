"""Run one evaluation task on one data set, and format the results as CLIP_benchmark does,
with how many samples were scored and how many skipped (by reason)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.eval_sets import EvalSet, Tally, batches, num_batches, open_data
from .features import encode_images
from .linear_probe import holdout_split, linear_probe
from .retrieval import evaluate_retrieval
from .zeroshot import build_classifier, evaluate_classification

log = logging.getLogger("clipa.eval")

TASKS = ("zeroshot", "retrieval", "linear-probe")
# CLIP_benchmark's task names in its result files.
BENCHMARK_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                  "linear-probe": "linear_probe"}


def default_task(evalset: EvalSet) -> str:
    return "retrieval" if evalset.kind == "retrieval" else "zeroshot"


def _features(model, evalset: EvalSet, tally: Tally, device, batch_size: int, workers: int, show: bool,
              amp: bool):
    feats, labels = encode_images(model, batches(evalset, batch_size, workers, tally), device, amp, show,
                                  f"{evalset.name} features", num_batches(evalset, batch_size))
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
    device: str | torch.device,
    batch_size: int = 256,
    workers: int = 0,
    show_progress: bool = False,
    amp: bool = False,
    recall_k: Sequence[int] = (1, 5, 10),
    train_set: EvalSet | None = None,
    probe_train_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ``task`` on ``evalset``, under CLIP_benchmark's metric names, and under
    ``"samples"`` how many were scored and skipped (``{"scored": n, "skipped": {reason: n}}``);
    :func:`result_record` moves that entry beside the metrics."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    want = "retrieval" if task == "retrieval" else "classification"
    if evalset.kind != want:
        raise ValueError(f"{evalset.name} is a {evalset.kind} data set; task {task!r} needs {want} data")
    was_training = model.training
    model.eval()
    tally = Tally()
    try:
        metrics = _evaluate(model, tokenizer, evalset, task, tally, device, batch_size, workers, show_progress,
                            amp, recall_k, train_set, probe_train_fraction, seed)
    finally:
        model.train(was_training)
    _report(evalset.name, tally)
    return {**metrics, "samples": tally.record()}


def _evaluate(model, tokenizer, evalset: EvalSet, task: str, tally: Tally, device, batch_size: int, workers: int,
              show: bool, amp: bool, recall_k: Sequence[int], train_set: EvalSet | None, probe_train_fraction: float,
              seed: int) -> dict[str, float]:
    if task == "zeroshot":
        clf = build_classifier(model, tokenizer, evalset.classnames, evalset.templates, device, batch_size, amp, show)
        return evaluate_classification(model, clf, batches(evalset, batch_size, workers, tally), device, amp,
                                       show, num_batches(evalset, batch_size))
    if task == "retrieval":
        return evaluate_retrieval(model, tokenizer, batches(evalset, batch_size, workers, tally), device, recall_k,
                                  batch_size, amp, show, num_batches(evalset, batch_size))
    x, y = _features(model, evalset, tally, device, batch_size, workers, show, amp)
    if train_set is not None:
        train_tally = Tally()
        tx, ty = _features(model, train_set, train_tally, device, batch_size, workers, show, amp)
        _report(train_set.name + " (linear-probe training split)", train_tally)
    else:  # no training split: a stratified hold-out of the evaluation set
        tr, te = holdout_split(y, probe_train_fraction, seed)
        tx, ty, x, y = x[tr], y[tr], x[te], y[te]
    return linear_probe(tx, ty, x, y, num_classes=len(evalset.classnames or []) or None, seed=seed)


def run_evals(model: Any, tokenizer: Callable[[list[str]], torch.Tensor], eval_cfg: Any,
              device: str | torch.device, workers: int = 0, amp: bool | torch.dtype = False) -> dict[str, float]:
    """The training loop's hook: ``eval_cfg.data`` (an ``EvalConfig``) with its default task,
    read by ``workers`` loader processes, under the run's autocast dtype ``amp``."""
    evalset = open_data(eval_cfg.data, model.visual.image_size, max_samples=eval_cfg.max_samples)
    return evaluate_set(model, tokenizer, evalset, default_task(evalset), device, eval_cfg.batch_size,
                        workers=workers, amp=amp)


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
    """A terminal table: one row per data set and task, one column per metric (percent)."""
    rows = [("dataset", "task", "metric", "value")]
    for r in records:
        for k, v in r["metrics"].items():
            value = "n/a" if v is None else (f"{v:.4g}" if k == "C" else f"{100 * v:.2f}")
            rows.append((r["dataset"], r["task"], k, value))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Run one evaluation task on one data set, and format the results as CLIP_benchmark does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .datasets import EvalSet, caption_shards_set, clip_benchmark_set, eval_transform, image_folder_set, loader
from .datasets import num_batches
from .features import encode_images
from .linear_probe import holdout_split, linear_probe
from .retrieval import evaluate_retrieval
from .zeroshot import build_classifier, evaluate_classification

TASKS = ("zeroshot", "retrieval", "linear-probe")
# CLIP_benchmark's task names in its result files.
BENCHMARK_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                  "linear-probe": "linear_probe"}


def open_data(data: str | Path, image_size: int, split: str = "test", classnames: str | None = None,
              templates: str | None = None, max_samples: int | None = None) -> EvalSet:
    """Find out what ``data`` is: a CLIP_benchmark folder (``split/*.tar`` + ``classnames.txt``
    or ``dataset_type.txt``), retrieval shards (a ``.tar``, a brace pattern, a folder of shards)
    or an image folder (class sub-folders; needs ``classnames``)."""
    transform = eval_transform(image_size)
    path = Path(data)
    if path.is_dir():
        if (path / split).is_dir() and any((path / split).glob("*.tar")):
            return clip_benchmark_set(path, split, transform, max_samples)
        if any(path.glob("*.tar")):
            return caption_shards_set(path, transform, max_samples)
        if classnames is None:
            raise FileNotFoundError(f"{path} looks like an image folder; give its class names with --classnames FILE")
        return image_folder_set(path, classnames, templates, transform, max_samples)
    return caption_shards_set(data, transform, max_samples)


def default_task(evalset: EvalSet) -> str:
    return "retrieval" if evalset.kind == "retrieval" else "zeroshot"


def _features(model, evalset: EvalSet, device, batch_size: int, workers: int, show: bool, amp: bool):
    feats, labels = encode_images(model, loader(evalset, batch_size, workers), device, amp, show,
                                  f"{evalset.name} features", num_batches(evalset, batch_size))
    return feats, torch.cat([torch.as_tensor(y) for y in labels])


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
) -> dict[str, float]:
    """Metrics of ``task`` on ``evalset``, under CLIP_benchmark's metric names."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    want = "retrieval" if task == "retrieval" else "classification"
    if evalset.kind != want:
        raise ValueError(f"{evalset.name} is a {evalset.kind} data set; task {task!r} needs {want} data")
    was_training = model.training
    model.eval()
    try:
        if task == "zeroshot":
            clf = build_classifier(model, tokenizer, evalset.classnames, evalset.templates, device,
                                   batch_size, amp, show_progress)
            return evaluate_classification(model, clf, loader(evalset, batch_size, workers), device, amp,
                                           show_progress, num_batches(evalset, batch_size))
        if task == "retrieval":
            return evaluate_retrieval(model, tokenizer, loader(evalset, batch_size, workers), device, recall_k,
                                      batch_size, amp, show_progress, num_batches(evalset, batch_size))
        x, y = _features(model, evalset, device, batch_size, workers, show_progress, amp)
        if train_set is not None:
            tx, ty = _features(model, train_set, device, batch_size, workers, show_progress, amp)
        else:  # no training split: a stratified hold-out of the evaluation set
            tr, te = holdout_split(y, probe_train_fraction, seed)
            tx, ty, x, y = x[tr], y[tr], x[te], y[te]
        return linear_probe(tx, ty, x, y, num_classes=len(evalset.classnames or []) or None, seed=seed)
    finally:
        model.train(was_training)


def run_evals(model: Any, tokenizer: Callable[[list[str]], torch.Tensor], eval_cfg: Any,
              device: str | torch.device) -> dict[str, float]:
    """The training loop's hook: ``eval_cfg.data`` (an ``EvalConfig``) with its default task."""
    evalset = open_data(eval_cfg.data, model.visual.cfg.image_size, max_samples=eval_cfg.max_samples)
    return evaluate_set(model, tokenizer, evalset, default_task(evalset), device, eval_cfg.batch_size)


def result_record(dataset: str, task: str, metrics: dict[str, float], model: str, pretrained: str) -> dict:
    """One result file's content, in CLIP_benchmark's layout (NaN written as null)."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": BENCHMARK_TASK[task],
            "metrics": clean, "language": "en"}


def write_result(path: str | Path, record: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def format_table(records: Sequence[dict]) -> str:
    """A terminal table: one row per data set, task and metric; rates in percent with a "%" sign
    (the JSON records keep CLIP_benchmark's fractions of 1), counts as counts."""
    rows = [("dataset", "task", "metric", "value")]
    for r in records:
        for k, v in r["metrics"].items():
            value = ("n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if k == "C"
                     else f"{100 * v:.2f}%")
            rows.append((r["dataset"], r["task"], k, value))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "(rates in %; the JSON result files hold them as fractions of 1)"])

"""``clipa eval CHECKPOINT``: zero-shot classification, retrieval or a linear probe, with results
as CLIP_benchmark's JSON files and a table on the terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.eval_sets import IMAGENET_VARIANTS, imagenet_set, open_data
from ..data.transforms import build_eval_transform
from ..distributed import resolve_device
from ..eval.runner import TASKS, default_task, evaluate_set, format_table, result_record, write_result
from ..hub import load
from ..tokenizer import tokenizer_for
from ..train.evaluate import evaluate_during_training


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: zero-shot, retrieval or linear probe",
        description="Evaluate a clipa checkpoint folder, or an OpenCLIP weights file given with --model. "
                    "With no data given, a run trained on the built-in digits is scored on held-out digits.")
    p.add_argument("checkpoint", help="clipa checkpoint folder (or run folder), an hf-hub:ORG/REPO model, "
                                      "or a weights file or OpenCLIP pretrained tag (e.g. datacomp1b) with --model")
    p.add_argument("--model", help="registry name for a plain weights file (OpenCLIP layout), e.g. ViT-B-32")
    p.add_argument("--task", choices=TASKS, help="default: zeroshot for classification data, retrieval for captions")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="CLIP_benchmark webdataset folder, caption shards (.tar, brace pattern, folder) or an "
                        "image folder (with --classnames); repeatable")
    p.add_argument("--split", default="test", help="split folder of a CLIP_benchmark layout (default: test)")
    p.add_argument("--train-split", default="train",
                   help="linear probe: training split folder; when absent, a stratified half of --split is used")
    p.add_argument("--classnames", help="class-name file for an image folder: line i names the i-th folder")
    p.add_argument("--templates", help="prompt templates file ({c} = class name); default OpenAI's 80")
    for variant in IMAGENET_VARIANTS:
        p.add_argument(f"--{variant}", metavar="DIR", dest=variant.replace("-", "_"),
                       help=f"local {variant} folder (ImageNet class names and the 80 OpenAI templates)")
    p.add_argument("--output", "-o", help="results JSON; with several data sets or tasks, '{dataset}' and '{task}' "
                                    "in the name are filled in, else they are appended to it")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N images of each data set")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def default_evaluation(model: Any, run_cfg: Any, device: str) -> tuple[str, str, dict[str, float]]:
    """``clipa eval CHECKPOINT`` alone: what the run evaluated during training (the held-out
    digits or world tasks for a built-in run, else its ``eval.data``)."""
    if run_cfg is None:
        raise ValueError("nothing to evaluate: give --data DIR or an ImageNet folder (e.g. --imagenet-val DIR)")
    metrics = evaluate_during_training(model, run_cfg, device)
    if not metrics:
        raise ValueError("this run has no built-in evaluation (not trained on digits, no eval.data): "
                         "give --data DIR or an ImageNet folder")
    name = run_cfg.data.source if run_cfg.eval.data is None else Path(run_cfg.eval.data).name  # digits or world
    return name, "zeroshot" if any(k.endswith("acc1") for k in metrics) else "retrieval", metrics


def output_path(template: str, dataset: str, task: str, several: bool) -> Path:
    if "{dataset}" in template or "{task}" in template:
        return Path(template.format(dataset=dataset, task=task))
    path = Path(template)
    return path.with_name(f"{path.stem}_{dataset}_{task}{path.suffix or '.json'}") if several else path


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, run_cfg = load(args.checkpoint, args.model)  # in eval mode
    model_name = args.model or (run_cfg.model if run_cfg else args.checkpoint)
    model.to(device)
    tokenizer = tokenizer_for(model)
    size = model.visual.image_size
    show = not args.no_progress
    start = time.perf_counter()

    sets = [(d, open_data(d, size, args.split, args.classnames, args.templates, args.max_samples)) for d in args.data]
    sets += [(None, imagenet_set(v, getattr(args, v.replace("-", "_")), build_eval_transform(size), args.max_samples))
             for v in IMAGENET_VARIANTS if getattr(args, v.replace("-", "_"))]
    results = []
    if not sets:
        results.append(default_evaluation(model, run_cfg, device))
    for source, evalset in sets:
        task = args.task or default_task(evalset)
        train_set = None
        if task == "linear-probe" and source is not None and (Path(source) / args.train_split).is_dir():
            train_set = open_data(source, size, args.train_split, args.classnames, args.templates)
        metrics = evaluate_set(model, tokenizer, evalset, task, device, args.batch_size, args.workers, show,
                               args.amp, args.recall_k, train_set)
        results.append((evalset.name, task, metrics))

    records = [result_record(name, task, metrics, model_name, str(args.checkpoint)) for name, task, metrics in results]
    print(format_table(records))
    print(f"evaluated in {time.perf_counter() - start:.1f} s on {device}", file=sys.stderr)
    if args.output:
        for record, (name, task, _) in zip(records, results):
            path = write_result(output_path(args.output, name, task, len(records) > 1), record)
            print(f"wrote {path}", file=sys.stderr)
    return 0


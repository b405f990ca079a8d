"""``clipa eval CHECKPOINT``: zero-shot classification, retrieval or a linear probe, with results
as CLIP_benchmark's JSON files and a table on the terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import Precision, choices, is_remote
from ..data.eval_sets import IMAGENET_VARIANTS, imagenet_set, open_data
from ..eval.runner import (TASKS, EvalOptions, default_task, eval_transform, evaluate_run, evaluate_set, format_table,
                           result_record, write_result)
from ..hub import load_model
from ..runtime import resolve_runtime
from ..tokenizer import tokenizer_for


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: zero-shot, retrieval or linear probe",
        description="Evaluate a clipa run or checkpoint, or an OpenCLIP model. With no data given, a clipa run "
                    "is scored on what it evaluated during training (its eval.data, or the held-out set of the "
                    "built-in source it trained on).")
    p.add_argument("checkpoint", help="clipa run or checkpoint folder, a folder in OpenCLIP's layout, an "
                                      "hf-hub:ORG/REPO model, or a weights file or OpenCLIP pretrained tag "
                                      "(e.g. datacomp1b) with --model")
    p.add_argument("--model", help="registry name for a plain weights file (OpenCLIP layout), e.g. ViT-B-32")
    p.add_argument("--task", choices=TASKS, help="default: zeroshot for classification data, retrieval for captions")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="CLIP_benchmark webdataset folder, caption shards (.tar, brace pattern, folder) or an "
                        "image folder (with --classnames); repeatable")
    p.add_argument("--split", default="test", help="split folder of a CLIP_benchmark layout, or the split a folder "
                   "of shards named SPLIT-N.tar gives (default: test)")
    p.add_argument("--train-split", default="train",
                   help="linear probe: training split folder; when absent, a stratified half of --split is used")
    p.add_argument("--classnames", help="class-name file for an image folder: line i names the i-th folder")
    p.add_argument("--templates", help="prompt templates file ({c} = class name); default OpenAI's 80")
    for variant in IMAGENET_VARIANTS:
        p.add_argument(f"--{variant}", metavar="DIR", dest=variant.replace("-", "_"),
                       help=f"local {variant} folder (ImageNet class names and the 80 OpenAI templates)")
    p.add_argument("--output", "-o", help="results JSON; with several data sets or tasks, '{dataset}' and '{task}' "
                                    "in the name are filled in, else they are appended to it")
    p.add_argument("--batch-size", type=int, default=256, help="images (and texts) per batch")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (0: in this process)")
    p.add_argument("--max-samples", type=int,
                   help="evaluate N images of each data set, evenly spaced over the whole set")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], help="retrieval: the k of recall@k")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=choices(Precision), default="fp32",
                   help="autocast precision, as train.precision (auto: bf16 on a GPU that has it, fp32 on CPU)")
    p.add_argument("--amp", dest="precision", action="store_const", const="bf16", help="the same as --precision bf16")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def output_path(template: str, dataset: str, task: str, several: bool) -> Path:
    if "{dataset}" in template or "{task}" in template:
        return Path(template.format(dataset=dataset, task=task))
    path = Path(template)
    return path.with_name(f"{path.stem}_{dataset}_{task}{path.suffix or '.json'}") if several else path


def _check_counts(args: argparse.Namespace) -> None:
    for flag, value in (("--batch-size", args.batch_size), ("--max-samples", args.max_samples),
                        ("--threads", args.threads), *(("--recall-k", k) for k in args.recall_k)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive whole number, got {value}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")


def run(args: argparse.Namespace) -> int:
    _check_counts(args)
    runtime = resolve_runtime(args.device, args.precision, args.workers, threads=args.threads)
    options = EvalOptions(runtime, args.batch_size, args.max_samples, tuple(args.recall_k), not args.no_progress)
    model, run_cfg = load_model(args.checkpoint, args.model)  # in eval mode
    model_name = args.model or (run_cfg.model if run_cfg else args.checkpoint)
    model.to(runtime.device)
    tokenizer = tokenizer_for(model)
    transform = eval_transform(model)
    start = time.perf_counter()

    sets = [(d, open_data(d, transform, args.split, args.classnames, args.templates, args.max_samples))
            for d in args.data]
    sets += [(None, imagenet_set(v, getattr(args, v.replace("-", "_")), transform, args.max_samples))
             for v in IMAGENET_VARIANTS if getattr(args, v.replace("-", "_"))]
    results = []
    if not sets:  # what the run evaluated during training, through the same path
        if run_cfg is None:
            raise ValueError("nothing to evaluate: give --data DIR or an ImageNet folder (e.g. --imagenet-val DIR)")
        if run_cfg.eval.data is not None and is_remote(run_cfg.eval.data):  # a saved config is data
            raise ValueError(f"the run's eval.data {run_cfg.eval.data!r} runs a command or reads a network source, "
                             "and comes only from its saved config: give it with --data to evaluate on it")
        done = evaluate_run(model, tokenizer, run_cfg.data.source, run_cfg.eval.data, options)
        if done is None:
            raise ValueError("this run has no built-in evaluation (not trained on a built-in source, no eval.data): "
                             "give --data DIR or an ImageNet folder")
        results.append(done)
    for source, evalset in sets:
        task = args.task or default_task(evalset)
        train_set = None
        if task == "linear-probe" and source is not None and (Path(source) / args.train_split).is_dir():
            train_set = open_data(source, transform, args.train_split, args.classnames, args.templates)
        results.append((evalset.name, task, evaluate_set(model, tokenizer, evalset, task, options, train_set)))

    records = [result_record(name, task, metrics, model_name, str(args.checkpoint)) for name, task, metrics in results]
    print(format_table(records))
    print(f"evaluated in {time.perf_counter() - start:.1f} s on {runtime.device}", file=sys.stderr)
    if args.output:
        for record, (name, task, _) in zip(records, results):
            path = write_result(output_path(args.output, name, task, len(records) > 1), record)
            print(f"wrote {path}", file=sys.stderr)
    return 0

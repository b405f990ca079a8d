"""``clipa train [CONFIG] [key.sub=value ...]``: train a CLIP model from a run config."""

from __future__ import annotations

import argparse
import sys

from .. import distributed
from ..train.resume import resolve_run
from ..train.signals import TrainingStopped
from ..train.trainer import Trainer


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a CLIP model (default: a small CLIP on the built-in digits)")
    p.add_argument("config", nargs="?", help="a run config YAML (see configs/); omitted = built-in default")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. stage.lr=1e-3 train.seed=1")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config:  # `clipa train key=value ...` without a file
        overrides.insert(0, config)
        config = None
    cfg, resume = resolve_run(config, overrides, log=lambda m: print(m, flush=True))
    trainer = Trainer(cfg, resume)
    try:
        results = trainer.fit()
    except TrainingStopped as e:  # a signal: saved, every rank stopped at the same step
        if trainer.dist.is_main:
            print(f"clipa: {e}", file=sys.stderr)
        distributed.shutdown()
        return e.exit_status
    distributed.shutdown()
    final = [r for r in results if "acc1" in r]
    if final:
        print(f"zero-shot top-1: {100 * final[-1]['acc1']:.1f}%")
    return 0

"""``clipa plan RECIPE``: compute, accelerator-hours and cost of a recipe, stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import plan as planner
from ..config import load_config


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="compute, accelerator-hours and cost of a recipe, per stage",
                              description=planner.__doc__.split("\n\n")[1])
    p.add_argument("recipe", help="a run config YAML, e.g. configs/clipa_v2_h14_dc1b_84_224.yaml")
    p.add_argument("--accelerator-tflops", type=float, default=planner.A100_BF16_TFLOPS,
                   help=f"peak dense TFLOP/s of one accelerator (default {planner.A100_BF16_TFLOPS:g}: A100 bf16)")
    p.add_argument("--mfu", type=float, default=planner.CLIPA_V2_MFU,
                   help=f"model FLOPs utilisation (default {planner.CLIPA_V2_MFU:g}, what CLIPA-v2's H/14 implies)")
    p.add_argument("--usd-per-hour", type=float, default=planner.CLIPA_V2_USD_PER_GPU_HOUR,
                   help=f"price of one accelerator-hour (default {planner.CLIPA_V2_USD_PER_GPU_HOUR:.3f})")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe)
    plans = planner.plan_run(cfg, args.accelerator_tflops, args.mfu, args.usd_per_hour)
    print(f"{Path(args.recipe).name}: {cfg.model}, {args.accelerator_tflops:g} TFLOP/s x MFU "
          f"{args.mfu:g}, ${args.usd_per_hour:.3f}/hour")
    print(planner.format_plan(plans))
    print("(training step = forward + backward, multiply-add = 2 FLOPs; tokens/pair = image + text "
          "sequence lengths after resizing and masking)")
    return 0

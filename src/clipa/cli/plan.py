"""``clipa plan RECIPE``: compute, accelerator-hours and cost of a recipe, stage by stage; with
``--gpus N``, each stage's memory per rank on N GPUs and the microbatch that fits."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import memory
from .. import plan as planner
from ..config import load_config, parse_bytes


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="compute, accelerator-hours, cost and memory of a recipe, per stage",
                              description=planner.__doc__.split("\n\n")[1])
    p.add_argument("recipe", help="a run config YAML, e.g. configs/clipa_v2_h14_dc1b_84_224.yaml")
    p.add_argument("--accelerator-tflops", type=float, default=planner.A100_BF16_TFLOPS,
                   help=f"peak dense TFLOP/s of one accelerator (default {planner.A100_BF16_TFLOPS:g}: A100 bf16)")
    p.add_argument("--mfu", type=float, default=planner.CLIPA_V2_MFU,
                   help=f"model FLOPs utilisation (default {planner.CLIPA_V2_MFU:g}, what CLIPA-v2's H/14 implies)")
    p.add_argument("--usd-per-hour", type=float, default=planner.CLIPA_V2_USD_PER_GPU_HOUR,
                   help=f"price of one accelerator-hour (default {planner.CLIPA_V2_USD_PER_GPU_HOUR:.3f})")
    p.add_argument("--gpus", type=int, help="plan memory per rank on this many GPUs (the recipe's global batches)")
    p.add_argument("--gpu-memory", default="80GB", help="memory of one GPU, e.g. 80GB (10^9 bytes) or 80GiB")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), help="replace the recipe's train.parallel")
    p.add_argument("--margin", type=float, default=memory.DEFAULT_MARGIN,
                   help=f"fraction of a GPU's memory kept free (default {memory.DEFAULT_MARGIN:g})")
    p.add_argument("--trace", action="store_true",
                   help="also trace one step of each stage under fake tensors (minutes) beside the formula")
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
    if args.gpus is None:
        if args.trace:
            raise ValueError("--trace plans memory: give --gpus too")
        return 0
    gpu_memory = parse_bytes(args.gpu_memory, "--gpu-memory")
    stages = planner.plan_stage_memory(cfg, args.gpus, gpu_memory, args.parallel, args.margin)
    s = stages[0].plan.setup
    print(f"\nmemory per rank on {args.gpus} x {args.gpu_memory} GPUs ({s.parallel}, {s.precision}; "
          f"{args.margin:.0%} kept free: {memory.format_bytes(stages[0].usable)} usable)")
    print(planner.format_memory(stages))
    print("(micro = the recipe's train.microbatch_size, else the largest that fits, as train.microbatch_size: "
          "auto picks it; = batch/rank: a plain step. fsdp grads = gradients of gathered parameters; casts = "
          "autocast's half-precision weight copies; cache = BASIC's embeddings and their gradients; peak = the "
          "largest phase of the step; ckpt = bytes each rank writes per checkpoint)")
    if args.trace:
        _trace(stages)
    return 0


def _trace(stages: list[planner.StageMemory]) -> None:
    """Each stage traced once under fake tensors (CPU kernels: CPU autocast and CPU flash
    attention), beside the formula for the same kernels."""
    from ..memory_trace import trace_step

    print("\ntrace: one step per stage under fake tensors, rank 0 of simulated ranks, CPU kernels")
    for st in stages:
        cpu = dataclasses.replace(st.plan.setup, device="cpu")
        formula, traced = memory.plan_memory(cpu).peak, trace_step(cpu)
        print(f"{st.name}: traced {memory.format_bytes(traced)}, formula {memory.format_bytes(formula)} "
              f"({formula / traced - 1:+.1%}); on GPU the formula says {memory.format_bytes(st.plan.peak)}", flush=True)

"""The memory plan (``clipa.memory``) against measured and traced peaks per rank.

Measured, on CPU: each configuration runs in fresh processes (two gloo processes for ddp
and fsdp), one thread each. A child warms the kernels up on a one-block model, reads its
RSS, builds the trainer's step (``memory_trace.build_step``: the model at the stage's
sizes, ``models.parallelize``, fused AdamW with its state, the trainer's loss, a batch),
runs two steps (DDP sizes its gradient buckets anew at the second), restarts the RSS
high-water mark and runs a third; measured = that step's peak RSS less the RSS before the
model was built. The children's
glibc maps every block of 64 KiB or more on its own (``peak_memory.TRANSPARENT_MALLOC``),
so the RSS follows live tensor bytes as CUDA's allocated-bytes counter does. The plan is
asked for the same step on device "cpu" (CPU autocast leaves LayerNorm in bf16).

Traced: ViT-H-14-CLIPA and ViT-bigG-14-CLIPA at the per-rank shapes of the stages of their
CLIPA-v2 recipes on 8, 64 and 256 ranks (ddp for H/14, fsdp for bigG/14, as the recipes say),
at the microbatch the plan picks for an 80 GB GPU, run once under fake tensors with FSDP2
over simulated ranks (``memory_trace.trace_step``, CPU kernels) beside the formula for the
same kernels. Minutes: every microbatch of every layer runs its shape functions.

The last line is the worst |estimate / reference - 1| over both parts.

    python benchmarks/memory_plan.py [--threads 1] [--skip-trace]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from peak_memory import TRANSPARENT_MALLOC, report, reset_peak_rss, rss_bytes, run_ranks

ROOT = Path(__file__).resolve().parents[1]

# A small ViT-B/16-like CLIP whose step peaks near 1 GiB: activations and the model both count.
SMALL = {"model": "ViT-B-16", "overrides": {
    "embed_dim": 256, "vision": {"image_size": 96, "width": 384, "layers": 4},
    "text": {"context_length": 32, "width": 256, "heads": 4, "layers": 4, "vocab_size": 8192}}}
# clipa-tiny at 16 px with 8-token captions: the loss over a big batch is most of the step.
LOSS_BOUND = {"model": "clipa-tiny", "overrides": {"vision": {"image_size": 16}, "text": {"context_length": 8}},
              "batch": 4096, "microbatch": 128}

MEASURED = [  # name, model and step
    ("plain", {**SMALL, "batch": 64}),
    ("microbatched 4 x 32", {**SMALL, "batch": 128, "microbatch": 32}),
    ("gradient checkpointing", {**SMALL, "batch": 128, "grad_checkpointing": True}),
    ("masked 50%", {**SMALL, "batch": 64, "seen_patches": 18}),
    ("bf16 autocast", {**SMALL, "batch": 32, "precision": "bf16"}),  # slow on CPU: a smaller batch
    ("naive loss, batch 4096", {**LOSS_BOUND}),
    ("tiled loss, batch 4096", {**LOSS_BOUND, "tiled_loss": True}),
    ("siglip, batch 4096", {**LOSS_BOUND, "loss": "siglip",
                           "overrides": {**LOSS_BOUND["overrides"], "init_logit_bias": -10.0}}),
    ("ddp, 2 ranks", {**SMALL, "batch": 128, "world_size": 2, "parallel": "ddp"}),
    ("fsdp, 2 ranks", {**SMALL, "batch": 128, "world_size": 2, "parallel": "fsdp"}),
    ("fsdp, 2 ranks, 2 x 32, resharded", {**SMALL, "batch": 128, "microbatch": 32, "world_size": 2,
                                          "parallel": "fsdp", "fsdp_reshard_after_forward": True}),
]

RECIPES = [  # recipe, GPUs; parallelism as the recipe says
    ("clipa_v2_h14_dc1b_84_224_336", 8),
    ("clipa_v2_h14_dc1b_84_224_336", 64),
    ("clipa_v2_h14_dc1b_84_224_336", 256),
    ("clipa_v2_bigg14_dc1b_84_224_336", 8),
    ("clipa_v2_bigg14_dc1b_84_224_336", 64),
    ("clipa_v2_bigg14_dc1b_84_224_336", 256),
]


def setup_of(spec: dict):
    """A ``StepSetup`` on device "cpu" from a spec: a model name, overrides and step fields;
    the global batch is ``batch``, split over ``world_size`` ranks."""
    from clipa.memory import StepSetup
    from clipa.models.registry import get_model_config

    spec = dict(spec)
    model = get_model_config(spec.pop("model"), **spec.pop("overrides", {}))
    world = spec.get("world_size", 1)
    grid = (model.vision.image_size // model.vision.patch_size) ** 2
    return StepSetup(model=model, image_size=model.vision.image_size, seen_patches=spec.pop("seen_patches", grid),
                     text_length=model.text.context_length, local_batch=spec.pop("batch") // world, device="cpu",
                     **spec)


def child(spec: dict, threads: int) -> None:
    import torch
    import torch.distributed as dist

    from clipa.memory_trace import build_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    warm = build_step(setup_of({"model": "clipa-tiny", "overrides": {"vision": {"layers": 1}, "text": {"layers": 1}},
                                "batch": 4, "microbatch": 2}))
    warm.step(warm.images, warm.text)
    del warm
    base = rss_bytes()
    built = build_step(setup_of(spec), rank)
    for _ in range(2):
        built.step(built.images, built.text)
    reset_peak_rss()
    start = time.perf_counter()
    built.step(built.images, built.text)
    report(base, time=time.perf_counter() - start)
    if world > 1:
        dist.destroy_process_group()


def measured_rows(threads: int) -> list[tuple[str, float]]:
    from clipa.memory import format_bytes, plan_memory
    from clipa.memory_trace import trace_step

    print(f"measured: peak RSS rise of each rank's step (fresh processes, {threads} thread(s), CPU, fp32 unless said)")
    print(f"{'configuration':34} {'plan':>10} {'measured':>10} {'traced':>10} {'plan/measured-1':>16} "
          f"{'phase':>18} {'s':>5}")
    errors = []
    for name, spec in MEASURED:
        setup = setup_of(spec)
        plan = plan_memory(setup)
        ranks = run_ranks(setup.world_size, __file__, json.dumps(spec), "--threads", str(threads),
                          env=TRANSPARENT_MALLOC)
        measured = max(r["delta"] for r in ranks)
        traced = trace_step(setup)
        error = plan.peak / measured - 1
        errors.append((name, error))
        print(f"{name:34} {format_bytes(plan.peak):>10} {format_bytes(measured):>10} {format_bytes(traced):>10} "
              f"{error:>+16.3f} {plan.peak_phase:>18} {max(r['time'] for r in ranks):5.1f}", flush=True)
    return errors


def traced_rows() -> list[tuple[str, float]]:
    import dataclasses

    from clipa.config import load_config
    from clipa.memory import format_bytes, plan_memory
    from clipa.memory_trace import trace_step
    from clipa.plan import plan_stage_memory

    print("traced: one steady step per rank under fake tensors (CPU kernels), at the plan's microbatch on 80 GB")
    print(f"{'recipe stage':44} {'ranks':>5} {'batch/rank':>10} {'micro':>6} {'plan':>10} {'traced':>10} "
          f"{'plan/traced-1':>14} {'s':>4}")
    errors = []
    for recipe, gpus in RECIPES:
        cfg = load_config(ROOT / "configs" / f"{recipe}.yaml")
        for stage in plan_stage_memory(cfg, gpus, gpu_memory=80 * 10**9):
            setup = dataclasses.replace(stage.plan.setup, device="cpu")
            plan = plan_memory(setup)
            start = time.perf_counter()
            traced = trace_step(setup)
            error = plan.peak / traced - 1
            name = f"{cfg.model} {stage.name}"
            errors.append((f"{name} x{gpus}", error))
            print(f"{name:44} {gpus:>5} {setup.local_batch:>10,} {setup.microbatch or '-':>6} "
                  f"{format_bytes(plan.peak):>10} {format_bytes(traced):>10} {error:>+14.3f} "
                  f"{time.perf_counter() - start:>4.0f}", flush=True)
    return errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-trace", action="store_true", help="measured configurations only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child), args.threads)
        return
    errors = measured_rows(args.threads)
    if not args.skip_trace:
        errors += traced_rows()
    name, worst = max(errors, key=lambda e: abs(e[1]))
    print(f"worst |estimate / reference - 1| over {len(errors)} configurations ({name}): {abs(worst):.3f}")


if __name__ == "__main__":
    main()

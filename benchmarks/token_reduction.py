"""CLIPA token reduction on CPU: measured training-step speed-up against the FLOP-count speed-up.

A ViT-B-16 CLIP (real widths: image 768, text 512; ``--layers`` sets the depth of both towers,
12 = the real model) takes training steps at full length (224 px = 196 patches, 77 text tokens)
and with each image strategy keeping 25% of the patches (``resize`` = 112 px, 49 patches;
``random`` / ``grid`` / ``block`` = 49 of 196 patches after the patch embedding) and text at 16
tokens. A step is what token reduction shrinks: forward of both towers, the contrastive loss and
the backward. The AdamW update costs the same at any token count and vanishes per sample at
CLIPA's batch sizes (32k-64k); it is timed apart and shown as a second column at this batch.

Each round times full and every reduced setting back to back; each setting's time is its best
over the rounds. On a machine shared with other jobs, one thread timed by process CPU time
(the default) is steady; with two threads, OpenMP barriers wait on descheduled threads and
small kernels slow down by unrelated amounts. ``--clock wall`` times wall clock instead; the
other clock's speed-up is printed in the last column either way.

FLOPs are ``clipa.flops`` (matmuls and attention; training step = 3x forward less the patch
embedding's input gradient; it matches OpenCLIP's published table). Last line: the worst
measured/FLOP ratio (goal >= 0.85).

    python benchmarks/token_reduction.py [--batch 16] [--threads 1] [--layers 12] [--rounds 3]
                                         [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import time

import torch

import clipa
from clipa.config import ImageReductionConfig
from clipa.flops import pair_flops
from clipa.loss import clip_loss
from clipa.reduction.image import num_kept, resize_image_size

STRATEGIES = ("resize", "random", "grid", "block")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=12, help="depth of both towers (real: 12)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of image patches kept")
    ap.add_argument("--text", type=int, default=16, help="reduced text length")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="process CPU time (default; steady on a shared machine) or wall time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = clipa.create_model("ViT-B-16", vision={"layers": args.layers}, text={"layers": args.layers})
    model.train()
    masking = torch.Generator().manual_seed(0)
    cfg = model.cfg
    full_size, patch, ctx = cfg.vision.image_size, cfg.vision.patch_size, cfg.text.context_length
    n = (full_size // patch) ** 2
    b = args.batch
    images = torch.randn(b, 3, full_size, full_size)
    eot = clipa.get_tokenizer("ViT-B-16").eot_token_id
    text = torch.randint(1, eot, (b, ctx))  # the ids do not change the cost
    text[:, -1] = eot

    def setting(strategy: str | None) -> tuple[int, ImageReductionConfig | None, int, int]:
        """(image size, reduction the tower applies, kept patches, text length)."""
        if strategy is None:
            return full_size, None, n, ctx
        red = ImageReductionConfig(strategy=strategy, ratio=1.0 - args.keep)
        if strategy == "resize":
            size = resize_image_size(red, full_size, patch)
            return size, None, (size // patch) ** 2, args.text
        return full_size, red, num_kept(red, n), args.text

    def timed(fn) -> tuple[float, float]:
        """(wall, process CPU) seconds of one call."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    def loss_backward(x: torch.Tensor, t: torch.Tensor) -> None:
        clip_loss(*model(x, t)).backward()

    def step(strategy: str | None) -> tuple[float, float]:
        size, red, _, length = setting(strategy)
        if model.visual.image_size != size:
            model.visual.set_image_size(size)  # as the trainer does for a resize stage
        model.visual.set_token_reduction(red, masking)
        x = images if size == full_size else torch.nn.functional.interpolate(images, size=size)
        t = text[:, -length:]  # ends in eot, like a reduced caption
        model.zero_grad(set_to_none=True)
        return timed(lambda: loss_backward(x, t))

    names = [None, *STRATEGIES]
    for s in names:  # warm-up
        step(s)
    wall = {s: float("inf") for s in [*names, "adamw"]}
    cpu = dict(wall)

    def record(name, times: tuple[float, float]) -> None:
        wall[name], cpu[name] = min(wall[name], times[0]), min(cpu[name], times[1])

    for _ in range(args.rounds):
        for s in names:
            record(s, step(s))
    model.visual.set_image_size(full_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step(None)
    for _ in range(args.rounds):
        record("adamw", timed(opt.step))
    best, alt = (cpu, wall) if args.clock == "cpu" else (wall, cpu)
    opt_time = best["adamw"]

    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"ViT-B-16 CLIP, {args.layers} layers per tower (real widths; {params:.0f}M parameters), "
          f"batch {b}, {args.threads} thread(s), best of {args.rounds} rounds of {args.clock} time; "
          f"step = forward + loss + backward")
    f_full = pair_flops(cfg, full_size, n, ctx).train_step
    print(f"full: 224 px, {n} patches, text {ctx}: {best[None]:.2f} s/step "
          f"({b * f_full / best[None] / 1e9:.1f} GFLOP/s); AdamW update {opt_time:.2f} s")
    other = "wall" if args.clock == "cpu" else "cpu"
    print(f"{'strategy':<8}{'img tok':>8}{'text':>6}{'s/step':>8}{'measured':>10}{'FLOP':>7}"
          f"{'meas/FLOP':>11}{'with AdamW':>12}{other + ' x':>9}")
    ratios = []
    for s in STRATEGIES:
        size, _, kept, length = setting(s)
        flop_x = f_full / pair_flops(cfg, size, kept, length).train_step
        meas_x = best[None] / best[s]
        with_opt = (best[None] + opt_time) / (best[s] + opt_time)
        ratios.append(meas_x / flop_x)
        print(f"{s:<8}{kept + 1:>8}{length:>6}{best[s]:>8.2f}{meas_x:>9.2f}x{flop_x:>6.2f}x"
              f"{meas_x / flop_x:>11.2f}{with_opt:>11.2f}x{alt[None] / alt[s]:>8.2f}x")
    print(f"worst measured/FLOP speed-up ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()

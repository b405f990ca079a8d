"""Model FLOPs utilisation of the real training step (clipa.train.step.TrainStep).

Synthetic batches already on the device; warm-up steps, then each step timed on its own
(synchronised) and the median taken. Achieved TFLOP/s counts the model's FLOPs
(``clipa.flops``: forward + backward of the towers as configured, token reduction included);
MFU divides it by the device's peak: for a GPU the datasheet's dense peak for the precision
in use (table below, by device name), on CPU a large matrix product of the same dtype
measured in this run with the same threads, interleaved with the steps. On a CPU shared with
other jobs, wall time measures them too; there each step and product is timed by this
process's CPU time over its threads (the time its threads ran; the wall-time figures are
printed beside). HFU also counts the work the step repeats: the re-materialised forward of
microbatched steps and the recomputed forward of gradient checkpointing. Last line: MFU.

    python benchmarks/mfu.py --device cpu --model ViT-B-16 --image-size 112 --text-length 32 --batch 32
    python benchmarks/mfu.py --device cuda --model ViT-B-16 --image-size 224 --batch 256
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

import clipa
from clipa.config import ImageReductionConfig, OptimConfig
from clipa.flops import pair_flops
from clipa.loss import clip_loss, sigmoid_loss, tiled_clip_loss
from clipa.models.parallelize import apply_compile
from clipa.reduction.image import num_seen
from clipa.runtime import resolve_runtime
from clipa.train.optim import build_optimizer
from clipa.train.step import TrainStep

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets: bf16/fp16 tensor cores,
# TF32 tensor cores, plain fp32. Matched by substring of torch.cuda.get_device_name(), in order.
GPU_PEAKS = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("V100", {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7}),  # fp16 tensor cores; no bf16, no TF32
    ("T4", {"bf16": 65.0, "tf32": 8.1, "fp32": 8.1}),  # fp16 tensor cores
]
LOSSES = {"clip": clip_loss, "tiled": tiled_clip_loss, "siglip": sigmoid_loss}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_peak(device: torch.device, dtype: torch.dtype | None, tf32: bool) -> tuple[float, str] | None:
    name = torch.cuda.get_device_name(device)
    kind = "bf16" if dtype is not None else ("tf32" if tf32 else "fp32")
    for key, peaks in GPU_PEAKS:
        if key in name:
            return peaks[kind] * 1e12, f"{name} datasheet, {kind} dense"
    return None


class Clock:
    """Seconds of a synchronised call: wall time, and on CPU also this process's CPU time
    divided by its threads."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu = device, [], []

    def __call__(self, fn, repeat: int = 1) -> None:
        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            fn()
        sync(self.device)
        self.wall.append((time.perf_counter() - wall) / repeat)
        self.cpu.append((time.process_time() - cpu) / torch.get_num_threads() / repeat)

    def median(self) -> float:
        """The time MFU is computed from: CPU time on a CPU, wall time on a GPU."""
        return statistics.median(self.cpu if self.device.type == "cpu" else self.wall)


def gemm(device: torch.device, dtype: torch.dtype, n: int = 2048):
    """An n x n x n product (2 n^3 FLOPs) to time with the step's threads."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def reduction_config(spec: str) -> ImageReductionConfig:
    """"none", "random:0.5", "grid", "block:0.5" (strategy[:ratio])."""
    strategy, _, ratio = spec.partition(":")
    return ImageReductionConfig(strategy=strategy, ratio=float(ratio) if ratio else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's")
    p.add_argument("--text-length", type=int, default=None, help="default: the model's context length")
    p.add_argument("--reduction", default="none", help="image token reduction: none, random:0.5, grid, block:0.5")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--microbatch", type=int, default=None)
    p.add_argument("--loss", choices=list(LOSSES), default="clip")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--no-tf32", action="store_true", help="fp32 matmuls without TF32 on CUDA")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the towers (train.compile)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"vision": {}, "text": {}, "grad_checkpointing": args.grad_checkpointing}
    if args.image_size:
        overrides["vision"]["image_size"] = args.image_size
    if args.text_length:
        overrides["text"]["context_length"] = args.text_length
    if args.loss == "siglip":
        overrides.update(init_logit_bias=-10.0, init_logit_scale=2.3)
    with torch.device(device):  # initialised where it trains (a billion parameters are slow on CPU)
        model = clipa.create_model(args.model, **overrides).train()
    cfg = model.cfg
    reduction = reduction_config(args.reduction)
    generator = torch.Generator(device=device).manual_seed(0)
    model.visual.set_token_reduction(reduction, generator)
    if args.compile:
        apply_compile(model, per_block=False)

    runtime = resolve_runtime(device, args.precision, 0, tf32=not args.no_tf32)  # what the trainer sets
    dtype = runtime.dtype
    tf32 = device.type == "cuda" and not args.no_tf32 and dtype is None
    optimizer = build_optimizer(model, OptimConfig(), 1e-5)
    step = TrainStep(model, model.logit_scale, optimizer, LOSSES[args.loss], device=device, dtype=dtype,
                     microbatch_size=args.microbatch, grad_clip=1.0, generators=(generator,))

    size, length = cfg.vision.image_size, cfg.text.context_length
    grid = size // cfg.vision.patch_size
    pair = pair_flops(cfg, size, num_seen(reduction, (grid, grid)), length)
    model_flops = args.batch * pair.train_step
    repeated = (args.microbatch is not None and args.microbatch < args.batch) + args.grad_checkpointing
    hardware_flops = model_flops + repeated * args.batch * pair.forward

    g = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(args.batch, 3, size, size, device=device, generator=g)
    text = torch.randint(1, 49407, (args.batch, length), device=device, generator=g)
    text[:, -1] = 49407  # end of text, where argmax pooling looks

    for _ in range(args.warmup):
        step(images, text)
    step.read()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gemm_dtype = dtype or torch.float32
    product = gemm(device, gemm_dtype)
    peak = gpu_peak(device, dtype, tf32) if device.type == "cuda" else None
    steps, products = Clock(device), Clock(device)
    for _ in range(args.steps):
        steps(lambda: step(images, text))
        if peak is None:  # CPU, or a GPU not in the table: measure, alternating with the steps
            products(product, repeat=3)
    stats = step.read()
    if stats.skipped:
        raise SystemExit(f"{stats.skipped} of the timed steps had a non-finite loss: the timing is not of real steps")

    seconds = steps.median()
    achieved = model_flops / seconds
    if peak is None:
        how = "CPU time over threads" if device.type == "cpu" else "wall time"
        peak = (2 * 2048**3 / products.median(), f"2048^3 {str(gemm_dtype).removeprefix('torch.')} GEMM measured "
                f"here, {torch.get_num_threads()} threads, {how}; by wall time "
                f"{2 * 2048**3 / statistics.median(products.wall) / 1e12:.3f}")
    peak_flops, peak_source = peak
    if device.type == "cuda":
        memory = f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    else:
        memory = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"

    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    print(f"{args.model} {size} px ({pair.image_tokens} image tokens, reduction {args.reduction}), text {length}, "
          f"batch {args.batch}" + (f" as microbatches of {args.microbatch}" if args.microbatch else "")
          + f", {args.loss} loss, {precision}" + (" + TF32" if tf32 else "")
          + (", compiled" if args.compile else "") + (", gradient checkpointing" if args.grad_checkpointing else ""))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"median of {args.steps} steps after {args.warmup} warm-up: {seconds * 1000:.1f} ms/step, "
          f"{args.batch / seconds:.1f} samples/s (wall time {statistics.median(steps.wall) * 1000:.1f} ms/step, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"model FLOPs per step {model_flops / 1e12:.3f} TFLOP; achieved {achieved / 1e12:.3f} TFLOP/s")
    print(f"peak {peak_flops / 1e12:.3f} TFLOP/s ({peak_source})")
    print(f"HFU {hardware_flops / seconds / peak_flops:.3f}; {memory}")
    print(f"MFU: {achieved / peak_flops:.3f}")


if __name__ == "__main__":
    main()

"""Peak memory of one training step of a small ViT CLIP (clipa-tiny: 32 px, patch 4, width
128, 3+3 layers) at contrastive batch 1,024 done as 16 re-materialised microbatches of 64,
against a plain step at batch 64 and a plain step at batch 1,024.

Each configuration runs in its own process. Memory = the rise of the peak RSS
(``getrusage``) above the RSS just before the step, with the model, the AdamW state and the
batch already allocated: what the step itself needs (activations, gradients, loss).

    python benchmarks/big_batch.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

from peak_memory import GIB, report, rss_bytes, run_child

CONFIGS = [  # name, batch, microbatch, gradient checkpointing
    ("plain 64", 64, None, False),
    ("plain 1024", 1024, None, False),
    ("1024 as 16 x 64", 1024, 64, False),
    ("1024 as 16 x 64 + checkpointing", 1024, 64, True),
]


def child(batch: int, microbatch: int | None, checkpointing: bool, threads: int) -> None:
    import torch

    import clipa
    from clipa.bigbatch import forward_backward
    from clipa.loss import clip_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = clipa.create_model("clipa-tiny").train()
    model.set_grad_checkpointing(checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # allocate the optimizer state before measuring
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    images = torch.randn(batch, 3, 32, 32)
    tokens = torch.randint(1, 49407, (batch, 16))
    base = rss_bytes()
    start = time.perf_counter()
    loss = forward_backward(model, images, tokens, clip_loss, microbatch)
    opt.step()
    opt.zero_grad(set_to_none=True)
    report(base, time=time.perf_counter() - start, loss=float(loss))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        batch, micro, ckpt = args.child
        child(int(batch), None if micro == "None" else int(micro), ckpt == "True", args.threads)
        return
    print(f"one training step of clipa-tiny (AdamW), fp32, CPU, {args.threads} threads; "
          "memory = peak RSS rise above model + optimizer state + batch")
    peaks = {}
    for name, batch, micro, ckpt in CONFIGS:
        r = run_child(__file__, str(batch), str(micro), str(ckpt), "--threads", str(args.threads))
        peaks[name] = r["delta"]
        print(f"{name:32}: step peak {r['delta'] / GIB:6.3f} GiB, time {r['time']:6.2f} s, loss {r['loss']:.4f}")
    print(f"1024 as 16 x 64 vs plain 1024: {peaks['1024 as 16 x 64'] / peaks['plain 1024']:.2f}x")
    print(f"1024 as 16 x 64 vs plain 64 (goal <= 1.5): {peaks['1024 as 16 x 64'] / peaks['plain 64']:.2f}x")


if __name__ == "__main__":
    main()

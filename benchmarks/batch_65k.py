"""One full training step (forward, loss, backward, AdamW) at contrastive batch 65,536 on CPU.

Small model: clipa-tiny at 16 px (4 x 4 patches) with captions of 8 tokens, embedding
dimension 128. The step is the BASIC re-materialised one (microbatches of 2,048) with the
tiled loss; nothing in it holds more than one microbatch's activations or one B x tile
block of logits. Memory: peak RSS of this (fresh) process, and its rise above the RSS
with model, optimizer state and batch allocated.

    python benchmarks/batch_65k.py [--batch 65536] [--microbatch 2048] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import clipa
from clipa.bigbatch import forward_backward
from clipa.loss import tiled_clip_loss
from peak_memory import GIB, peak_rss_bytes, rss_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--microbatch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = clipa.create_model("clipa-tiny", vision={"image_size": 16}, text={"context_length": 8}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for q in model.parameters():  # allocate the optimizer state before measuring
        q.grad = torch.zeros_like(q)
    opt.step()
    opt.zero_grad(set_to_none=True)
    images = torch.randn(args.batch, 3, 16, 16)
    tokens = torch.randint(1, 49407, (args.batch, 8))
    base = rss_bytes()

    start, cpu_start = time.perf_counter(), time.process_time()
    loss = forward_backward(model, images, tokens, tiled_clip_loss, args.microbatch)
    opt.step()
    opt.zero_grad(set_to_none=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    peak = peak_rss_bytes()
    print(f"clipa-tiny at 16 px / 8 tokens, fp32, CPU, {args.threads} threads; batch {args.batch} "
          f"as {-(-args.batch // args.microbatch)} microbatches of {args.microbatch}, tiled loss")
    print(f"loss {loss:.4f} (ln B = {torch.tensor(float(args.batch)).log():.4f})")
    print(f"process peak RSS {peak / GIB:.2f} GiB; rise during the step {(peak - base) / GIB:.2f} GiB")
    print(f"CPU time {cpu_seconds:.1f} s over {args.threads} threads (wall time above that / {args.threads} "
          "means other jobs shared the cores)")
    print(f"seconds for one training step at batch {args.batch}: {seconds:.1f}")


if __name__ == "__main__":
    main()

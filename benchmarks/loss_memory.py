"""Peak memory and time of the contrastive loss forward+backward: naive vs tiled.

Each (size, implementation) runs in its own child process, so one measurement cannot
inherit another's allocator pages. Memory method: the child's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark), reported both as the
whole process (Python + torch runtime + inputs + loss) and as the delta above the RSS
measured just before the loss runs (inputs already allocated). Time: best of ``--repeat``
forward+backward passes. The naive loss is skipped where its B x B matrices (about six of
them at peak) would not fit in the available memory.

    python benchmarks/loss_memory.py [--sizes 4096 16384 65536] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time

from peak_memory import GIB, available_bytes, report, rss_bytes, run_child

NAIVE_MATRICES = 6  # B x B fp32 buffers alive at the naive loss's peak (logits, log-softmaxes, grads)


def child(impl: str, batch: int, dim: int, repeat: int, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    from clipa.loss import clip_loss, tiled_clip_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    img = F.normalize(torch.randn(batch, dim), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(batch, dim), dim=-1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)  # exp(t), as the model's forward returns it
    loss_fn = clip_loss if impl == "naive" else tiled_clip_loss
    base = rss_bytes()
    best = math.inf
    for _ in range(repeat):
        img.grad = txt.grad = scale.grad = None
        start = time.perf_counter()
        loss = loss_fn(img, txt, scale)
        loss.backward()
        best = min(best, time.perf_counter() - start)
        del loss
    report(base, time=best)


def measure(impl: str, batch: int, args: argparse.Namespace) -> dict:
    repeat = args.repeat if batch < 65536 else 1  # one pass there takes minutes on 2 cores
    return run_child(__file__, impl, str(batch), "--dim", str(args.dim),
                     "--repeat", str(repeat), "--threads", str(args.threads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("IMPL", "B"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.dim, args.repeat, args.threads)
        return

    print(f"loss forward+backward, D={args.dim}, fp32, CPU, {args.threads} threads; "
          f"memory = peak RSS of a fresh process (and its rise above the inputs)")
    results: dict[tuple[str, int], dict] = {}
    for batch in args.sizes:
        for impl in ("naive", "tiled"):
            need = NAIVE_MATRICES * batch * batch * 4
            if impl == "naive" and need > 0.8 * available_bytes():
                print(f"B={batch:>6} {impl:5}: skipped, needs ~{need / GIB:.0f} GiB "
                      f"of {available_bytes() / GIB:.0f} GiB available")
                continue
            r = results[impl, batch] = measure(impl, batch, args)
            print(f"B={batch:>6} {impl:5}: peak {r['peak'] / GIB:6.2f} GiB "
                  f"(+{r['delta'] / GIB:.2f} GiB over inputs), time {r['time']:7.2f} s")
        if ("naive", batch) in results and ("tiled", batch) in results:
            ratio = results["tiled", batch]["time"] / results["naive", batch]["time"]
            print(f"B={batch:>6} tiled/naive time: {ratio:.2f}x")
    biggest = max(b for (impl, b) in results if impl == "tiled")
    print(f"tiled peak GiB at B={biggest}: {results['tiled', biggest]['peak'] / GIB:.2f}")


if __name__ == "__main__":
    main()

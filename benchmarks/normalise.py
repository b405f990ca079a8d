"""CPU cost of turning a uint8 batch into normalised float input: the trainer's ``normalise`` vs the old loader path.

Before, the training loader normalised every uint8 batch into a new float32 tensor in the
training process (``torch.sub(images, 255 * mean, out=...)`` then ``div_(255 * std)``,
broadcasting a [1, 3, 1, 1] tensor). Now loaders hand over uint8 batches and the trainer
normalises on its device (:func:`clipa.data.transforms.normalise`: one conversion, then
per-channel scalar arithmetic in place); on a GPU that is a few microseconds, and this
measures the CPU case, where it must be at least as fast. Both give the same numbers
(checked here to 1e-6 against float64). One torch thread, best of ``--repeats``.
Last line: old time / new time (>= 1.0).

    python benchmarks/normalise.py [--batch 256] [--size 224]
"""

from __future__ import annotations

import argparse
import time

import torch

from clipa.config import CLIP_MEAN, CLIP_STD
from clipa.data.transforms import normalise

SHIFT = 255 * torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
SCALE = 255 * torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def old_normalise(images: torch.Tensor) -> torch.Tensor:
    """The loader's normalisation before (clipa 2026-11, data/transforms.py)."""
    out = torch.empty(images.shape, dtype=torch.float32)
    return torch.sub(images, SHIFT, out=out).div_(SCALE)


def best_ms(fn, images: torch.Tensor, repeats: int) -> float:
    fn(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    reference = (images.double() / 255 - torch.tensor(CLIP_MEAN).double().view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD).double().view(1, 3, 1, 1)
    def new_normalise(x: torch.Tensor) -> torch.Tensor:
        return normalise(x, CLIP_MEAN, CLIP_STD)

    for fn in (old_normalise, new_normalise):
        error = (fn(images).double() - reference).abs().max().item()
        assert error < 1e-6, (fn.__name__, error)
    old, new = best_ms(old_normalise, images, args.repeats), best_ms(new_normalise, images, args.repeats)
    print(f"uint8 [{args.batch}, 3, {args.size}, {args.size}] -> float32 on CPU, one thread, best of {args.repeats}")
    print(f"old loader path {old:8.1f} ms")
    print(f"normalise       {new:8.1f} ms")
    print(f"ratio old/new: {old / new:.2f}")


if __name__ == "__main__":
    main()

"""``clipa flops MODEL``: analytic GFLOPs per image-text pair, forward and training step."""

from __future__ import annotations

import argparse

from .. import flops as counting
from ..config import ImageReductionConfig
from ..models.registry import get_model_config, list_models
from ..reduction.image import num_kept


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("flops", help="analytic GFLOPs per image-text pair (forward and training step)",
                              description=counting.__doc__.split("\n\n")[1])
    p.add_argument("model", help=f"registered model name ({', '.join(list_models())})")
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: the model's)")
    p.add_argument("--image-keep", type=float, default=1.0,
                   help="fraction of image patches kept by masking (default 1.0)")
    p.add_argument("--text-length", type=int, default=None,
                   help="text tokens (default: the model's context length)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    cfg = get_model_config(args.model)
    size = cfg.vision.image_size if args.image_size is None else args.image_size
    grid = counting.grid_side(size, cfg.vision.patch_size, what=f"--image-size for {args.model}:")
    if args.text_length is not None:
        counting.check_text_length(args.text_length, cfg.text.context_length, what=f"--text-length for {args.model}:")
    if not 0.0 < args.image_keep <= 1.0:
        raise ValueError(f"--image-keep {args.image_keep} is outside (0, 1]")
    # random masking keeps FLIP's max(1, int(N * keep)): the rule the trainer and the planner count by
    masking = ImageReductionConfig(strategy="random", ratio=round(1.0 - args.image_keep, 12))
    f = counting.pair_flops(cfg, size, num_kept(masking, grid * grid), args.text_length)
    rows = [
        ("image", f.image, 3 * f.image - f.patch_embed),
        ("text", f.text, 3 * f.text),
        ("total", f.forward, f.train_step),
    ]
    print(f"{args.model}: image {size} px, {f.image_tokens} image tokens "
          f"({f.image_tokens - 1} of {grid * grid} patches + class), {f.text_tokens} text tokens")
    print(f"{'GFLOPs':<8}{'forward':>12}{'train step':>14}")
    for name, fwd, step in rows:
        print(f"{name:<8}{fwd / 1e9:>12,.2f}{step / 1e9:>14,.2f}")
    print("(multiply-add = 2 FLOPs; matmuls and attention only; train step = 3x forward "
          "less the patch embedding's input gradient)")
    return 0

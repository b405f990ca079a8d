"""``clipa show-masks IMAGE``: draw the patches and words each token reduction rule keeps."""

from __future__ import annotations

import argparse

from .. import viz


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("show-masks", help="draw the patches and words each token reduction rule keeps",
                              description=viz.__doc__.split("\n\n")[1])
    p.add_argument("image", help="an image file")
    p.add_argument("--output", "-o", default="masks.png", help="output PNG (default masks.png)")
    p.add_argument("--ratio", type=float, default=0.75,
                   help="fraction of patches removed (default 0.75; grid always keeps 1 per 2x2)")
    p.add_argument("--caption", default=None, help="a caption to cut with each text rule")
    p.add_argument("--text-length", type=int, default=8, help="text tokens incl. start/end (8)")
    p.add_argument("--model", default="ViT-B-16", help="model whose grid and tokenizer to use")
    p.add_argument("--tagger", default="builtin", choices=("builtin", "nltk"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    out = viz.show_masks(args.image, args.output, args.ratio, args.caption, args.text_length, args.model,
                         args.tagger, args.seed)
    print(f"wrote {out}")
    return 0

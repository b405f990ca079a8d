"""``clipa export CHECKPOINT --output DIR``: a folder OpenCLIP / CLIP_benchmark or transformers load."""

from __future__ import annotations

import argparse

from ..export import FORMATS, export
from ..checkpoint import load_model


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a checkpoint for OpenCLIP / CLIP_benchmark or transformers")
    p.add_argument("checkpoint", help="clipa checkpoint folder (or run folder), or a weights file with --model")
    p.add_argument("--format", choices=FORMATS, default="openclip")
    p.add_argument("--output", "-o", required=True, help="folder to write")
    p.add_argument("--model", help="registry name for a plain weights file")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.checkpoint, args.model)
    out = export(model, args.output, args.format)
    how = (f'open_clip.create_model_and_transforms("local-dir:{out}")' if args.format == "openclip"
           else f'transformers.CLIPModel.from_pretrained("{out}")')
    print(f"wrote {out}; load with {how}")
    return 0

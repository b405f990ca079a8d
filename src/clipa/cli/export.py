"""``clipa export CHECKPOINT --output DIR``: a folder OpenCLIP / CLIP_benchmark or transformers load;
``--push-to-hub ORG/REPO`` uploads OpenCLIP's hub layout instead of (or as well as) writing it."""

from __future__ import annotations

import argparse

from ..export import FORMATS, export
from ..hub import load_model, push_to_hub


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="write a checkpoint for OpenCLIP / CLIP_benchmark or transformers")
    p.add_argument("checkpoint", help="clipa run or checkpoint folder, a folder in OpenCLIP's layout, an "
                                      "hf-hub:ORG/REPO model, or a weights file or pretrained tag with --model")
    p.add_argument("--format", choices=FORMATS, default="openclip",
                   help="openclip: open_clip_config.json beside open_clip_model.safetensors (default); "
                        "hf: a transformers CLIPModel")
    p.add_argument("--output", "-o", help="folder to write (required unless --push-to-hub)")
    p.add_argument("--push-to-hub", metavar="ORG/REPO[@REV]",
                   help="upload OpenCLIP's hub layout with a model card to this Hugging Face repository "
                        "(--format openclip; the token is huggingface_hub's: HF_TOKEN or `hf auth login`)")
    p.add_argument("--model", help="registry name for a plain weights file")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.push_to_hub and args.format != "openclip":
        raise ValueError("--push-to-hub uploads OpenCLIP's layout: use it with --format openclip")
    if not (args.output or args.push_to_hub):
        raise ValueError("give --output DIR, --push-to-hub ORG/REPO, or both")
    model, _ = load_model(args.checkpoint, args.model)
    if args.output:
        out = export(model, args.output, args.format)
        how = (f'open_clip.create_model_and_transforms("local-dir:{out}")' if args.format == "openclip"
               else f'transformers.CLIPModel.from_pretrained("{out}")')
        print(f"wrote {out}; load with {how}")
    if args.push_to_hub:
        url = push_to_hub(model, args.push_to_hub)
        print(f'pushed to {url}; load with open_clip.create_model_and_transforms("hf-hub:{args.push_to_hub}")')
    return 0

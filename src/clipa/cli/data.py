"""``clipa data convert | inspect | resize``: write webdataset shards; count, check and look at a
source; shrink shards' images for low-resolution pretraining stages."""

from __future__ import annotations

import argparse
import json

from ..data.resize import resize
from ..data.sources import ColumnError
from ..data.tools import convert, inspect


def _table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-key", default="filepath", help="CSV column with image paths")
    p.add_argument("--caption-key", default="title", help="CSV column with captions")
    p.add_argument("--separator", default=",", help="CSV separator (.tsv files always use a tab)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="convert and inspect training data")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("convert", help="write webdataset shards and sizes.json from a folder or CSV/TSV")
    p.add_argument("source", help="a folder of images (with captions.json/.csv/.tsv or a .txt beside each image), "
                                  "a CSV/TSV file, or shards to re-shard")
    p.add_argument("--output", "-o", required=True, help="folder for 00000.tar, 00001.tar, ... and sizes.json")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    _table_options(p)

    p = sub.add_parser("inspect", help="counts, skipped samples, caption lengths and a grid of samples")
    p.add_argument("source", help="shards (a folder of them, brace patterns, '::' joins), a CSV/TSV or an image folder")
    p.add_argument("--grid", help="write a PNG grid of sample images with their captions here")
    p.add_argument("--grid-samples", type=int, default=16)
    p.add_argument("--max-samples", type=int, help="stop after this many samples")
    _table_options(p)

    p = sub.add_parser("resize", help="rewrite webdataset shards with every image's short side at --size px "
                                      "(resumable; damaged samples skipped and counted)")
    p.add_argument("source", help="shards (brace patterns, '::' joins)")
    p.add_argument("--size", type=int, required=True, help="short side in pixels, e.g. 96 for an 84 px stage")
    p.add_argument("--output", "-o", required=True, help="folder for the resized shards (same names), "
                                                         "sizes.json and resize.json (the resume record)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--workers", type=int, default=1, help="processes resizing shards in parallel")
    data.set_defaults(func=run)
    return data


def run(args: argparse.Namespace) -> int:
    if args.data_command == "resize":
        print(json.dumps(resize(args.source, args.output, args.size, args.quality, args.workers), indent=1))
        return 0
    table = {"image_key": args.image_key, "caption_key": args.caption_key, "separator": args.separator}
    try:
        if args.data_command == "convert":
            report = convert(args.source, args.output, args.shard_size, **table)
        else:
            report = inspect(args.source, args.grid, args.grid_samples, args.max_samples, **table)
    except ColumnError as e:  # name this command's flags, not the training config's keys
        flag = f"--{e.setting.replace('_', '-')}"
        raise ValueError(e.message(f"{flag} to the column's name (--separator if it is not {args.separator!r})")) from None
    if args.data_command == "convert":
        report["output"] = args.output
    print(json.dumps(report, indent=1))
    return 0

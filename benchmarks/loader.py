"""Decoded, augmented samples/s at 112 px: clipa's training loader vs OpenCLIP's ``get_wds_dataset``.

Both read the Flickr8k training shards (../shared/data/flickr8k/train-{0..5}.tar) with the same
number of DataLoader workers, the same batch size, the same crop (random resized crop, scale
0.4-1.0, bicubic, CLIP normalisation) and the same tokenizer (clipa's, so the loaders alone
differ). Each measurement is a fresh process: a few warm-up batches (worker start, shuffle
buffer fill), then a timed run of batches within the first epoch. The machine is shared, so the
two take turns, ``--repeats`` times, and the best of each is kept. torch runs one thread per
process. Last line: the ratio clipa / OpenCLIP.

OpenCLIP's training code (``open_clip_train``, inside the ``open_clip_torch`` wheel) needs
pandas and ``webdataset<=0.2.86`` (with webdataset 1.x its shard reader fails); when the installed
webdataset is newer, version 0.2.86 is installed once into ``--openclip-wds`` and put first on
that process's path only.

    python benchmarks/loader.py [--workers 2] [--batch-size 64] [--batches 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLIPA_SHARED_DATA", ROOT.parent / "shared" / "data"))
SHARDS = str(DATA / "flickr8k" / "train-{0..5}.tar")
NUM_SAMPLES = 6000
OPENCLIP_WDS = "0.2.86"


def _time_batches(batches, warmup: int, timed: int) -> float:
    """Samples/s over ``timed`` batches after ``warmup`` ones."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(timed):
        batch = next(it)
        n += len(batch["keys"] if isinstance(batch, dict) else batch[0])
    return n / (time.perf_counter() - start)


def run_clipa(args: argparse.Namespace, tokenize) -> float:
    from clipa.config import DataConfig
    from clipa.data import build_train_loader

    data = DataConfig(source=SHARDS, workers=args.workers)
    loader = build_train_loader(data, args.image_size, args.batch_size, tokenize, seed=0)
    return _time_batches(loader, args.warmup, args.batches)


def run_openclip(args: argparse.Namespace, tokenize) -> float:
    from open_clip.transform import AugmentationCfg, image_transform
    from open_clip_train.data import get_wds_dataset

    transform = image_transform(args.image_size, is_train=True, aug_cfg=AugmentationCfg(scale=(0.4, 1.0)))
    oc_args = argparse.Namespace(
        train_data=SHARDS, train_num_samples=NUM_SAMPLES, dataset_resampled=False,
        train_data_upsampling_factors=None, seed=0, batch_size=args.batch_size, workers=args.workers, world_size=1,
    )
    info = get_wds_dataset(oc_args, transform, is_train=True, tokenizer=tokenize)
    return _time_batches(info.dataloader, args.warmup, args.batches)


def _one(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as the last line."""
    import torch

    import clipa

    torch.set_num_threads(1)
    tokenize = clipa.get_tokenizer("ViT-B-16")
    rate = (run_clipa if args.one == "clipa" else run_openclip)(args, tokenize)
    print(f"{rate:.1f}")


def _openclip_path(target: Path) -> str | None:
    """A folder to put first on sys.path so that OpenCLIP's data code finds webdataset 0.2.86."""
    from packaging.version import Version

    if Version(version("webdataset")) <= Version(OPENCLIP_WDS):
        return None
    if not (target / "webdataset").is_dir():
        print(f"installing webdataset=={OPENCLIP_WDS} into {target} for OpenCLIP's loader", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"webdataset=={OPENCLIP_WDS}"], check=True)
    return str(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--openclip-wds", type=Path, default=Path.home() / ".cache" / "clipa" / "openclip-wds")
    ap.add_argument("--one", choices=["clipa", "openclip"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _one(args)
    if (args.warmup + args.batches) * args.batch_size > NUM_SAMPLES:
        ap.error("warm-up plus timed batches must fit in one epoch of the 6,000 training samples")
    extra = _openclip_path(args.openclip_wds)
    print(f"{args.workers} workers, batch {args.batch_size}, {args.image_size} px, {args.batches} timed batches "
          f"after {args.warmup}, torch 1 thread per process, best of {args.repeats}")
    best = {"clipa": 0.0, "openclip": 0.0}
    for r in range(args.repeats):
        for name in best:
            env = dict(os.environ)
            if name == "openclip" and extra:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
            out = subprocess.run(
                [sys.executable, __file__, "--one", name] + sys.argv[1:],
                env=env, capture_output=True, text=True,
            )
            if out.returncode:
                sys.exit(f"{name} run failed:\n{out.stderr[-3000:]}")
            rate = float(out.stdout.strip().splitlines()[-1])
            best[name] = max(best[name], rate)
            print(f"  run {r + 1} {name:8s} {rate:8.1f} samples/s", flush=True)
    print(f"clipa    best {best['clipa']:8.1f} samples/s")
    print(f"openclip best {best['openclip']:8.1f} samples/s")
    print(f"ratio clipa/openclip: {best['clipa'] / best['openclip']:.2f}")


if __name__ == "__main__":
    main()

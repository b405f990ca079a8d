"""Images/s per loader worker at CLIPA's pretraining sizes: clipa's training loader vs OpenCLIP's ``get_wds_dataset``.

Realistic sources: the Flickr8k training images (../shared/data/flickr8k, 128 px) upscaled to
512 px and re-encoded as JPEG quality 90, ``--samples`` of them in shards of 1,000, made once
and cached under ``--cache``; and the same shards pre-resized to a 96 px short side with
``clipa data resize``. At each output size (84, 112, 224 px) every loader runs with the same
DataLoader workers, batch size, crop (random resized crop, scale 0.4-1.0, bicubic, CLIP
normalisation) and tokenizer (clipa's, so the loaders alone differ):

- ``openclip``: ``open_clip_train.data.get_wds_dataset`` (decodes every image in full);
- ``clipa-worst``: ``data.decode_scale=worst_crop``, the DCT scale bounded by the smallest crop;
- ``clipa-per-crop``: ``data.decode_scale=per_crop`` (the default), the scale of the crop drawn;
- at 84 px also both from the 96 px shards.

Each measurement is a fresh process: warm-up batches (worker start), then timed batches within
the first epoch; torch runs one thread per process. The machine may be shared, so the loaders
take turns, ``--repeats`` times, and the best of each is kept. Then what one worker core feeds:
the pairs/s ViT-H-14-CLIPA needs at its 84 px stage (``clipa.flops``, the recipe's text length)
on an H100 (989 dense bf16 TFLOP/s) at 40% MFU, divided by clipa's images/s per worker. Last
line: clipa (per-crop) / OpenCLIP at 84 px from the 512 px shards (goal >= 3.0); the line
before: clipa from the 96 px shards / OpenCLIP from the 512 px ones (goal >= 6.0).

OpenCLIP's training code (``open_clip_train``, inside the ``open_clip_torch`` wheel) needs
pandas and ``webdataset<=0.2.86`` (with webdataset 1.x its shard reader fails); when the installed
webdataset is newer, version 0.2.86 is installed once into ``--openclip-wds`` and put first on
that process's path only.

    python benchmarks/loader.py [--workers 2] [--batch-size 64] [--batches 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLIPA_SHARED_DATA", ROOT.parent / "shared" / "data"))
FLICKR = str(DATA / "flickr8k" / "train-{0..5}.tar")
RECIPE = ROOT / "configs" / "clipa_v2_h14_dc1b_84_224.yaml"
OPENCLIP_WDS = "0.2.86"
SOURCE_SIDE, SMALL_SIDE, QUALITY, PER_SHARD = 512, 96, 90, 1000
H100_BF16_TFLOPS, MFU = 989.0, 0.4
LOADERS = ("openclip", "clipa-worst", "clipa-per-crop")


def upscaled(jpeg: bytes, side: int = SOURCE_SIDE, quality: int = QUALITY) -> bytes:
    """A JPEG scaled (bicubic) so that its short side is ``side``, re-encoded at ``quality``."""
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    scale = side / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_shards(cache: Path, samples: int) -> str:
    """``samples`` Flickr8k training pairs at 512 px in shards of 1,000 under ``cache`` (made once)."""
    from clipa.data.sources import load_source
    from clipa.data.tools import add_member

    folder = cache / f"flickr8k-{SOURCE_SIDE}px-q{QUALITY}-{samples}"
    spec = f"{folder}/{{00000..{(samples - 1) // PER_SHARD:05d}}}.tar"
    if (folder / "sizes.json").is_file():
        return spec
    print(f"making {samples} {SOURCE_SIDE} px samples in {folder} (once)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    source, written, tar = load_source(FLICKR), 0, None
    sizes: dict[str, int] = {}
    for shard_id in range(len(source.shards)):
        for _, raw in source.read(shard_id):
            if written == samples:
                break
            if written % PER_SHARD == 0:
                if tar is not None:
                    tar.close()
                name = f"{written // PER_SHARD:05d}.tar"
                tar, sizes[name] = tarfile.open(folder / name, "w"), 0
            add_member(tar, f"{raw['__key__']}.jpg", upscaled(raw["jpg"]))
            for ext in ("txt", "json"):
                add_member(tar, f"{raw['__key__']}.{ext}", raw[ext])
            written += 1
            sizes[name] += 1
    tar.close()
    if written < samples:
        sys.exit(f"only {written} Flickr8k training samples under {DATA}, fewer than --samples {samples}")
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1))  # written last: marks the cache complete
    return spec


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

    scale = "worst_crop" if args.one == "clipa-worst" else "per_crop"
    data = DataConfig(source=args.shards, workers=args.workers, decode_scale=scale)
    loader = build_train_loader(data, args.image_size, args.batch_size, tokenize, seed=0)
    return _time_batches(loader, args.warmup, args.batches)


def run_openclip(args: argparse.Namespace, tokenize) -> float:
    from open_clip.transform import AugmentationCfg, image_transform
    from open_clip_train.data import get_wds_dataset

    transform = image_transform(args.image_size, is_train=True, aug_cfg=AugmentationCfg(scale=(0.4, 1.0)))
    oc_args = argparse.Namespace(
        train_data=args.shards, train_num_samples=args.samples, dataset_resampled=False,
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
    rate = (run_openclip if args.one == "openclip" else run_clipa)(args, tokenize)
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


def h100_pairs_per_second() -> tuple[float, str]:
    """Pairs/s one H100 at 40% MFU trains ViT-H-14-CLIPA at in the recipe's first (84 px) stage."""
    from clipa import flops
    from clipa.config import load_config
    from clipa.models.registry import get_model_config
    from clipa.train.stage import resolve_stages

    cfg = load_config(RECIPE)
    model = get_model_config(cfg.model)
    stage = resolve_stages(cfg, model)[0]
    step = flops.pair_flops(model, stage.image_size, stage.seen_patches, stage.text_length).train_step
    what = f"{cfg.model} at {stage.image_size} px, {stage.text_length} text tokens: {step / 1e9:.0f} GFLOPs/pair"
    return H100_BF16_TFLOPS * 1e12 * MFU / step, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[84, 112, 224])
    ap.add_argument("--samples", type=int, default=4000, help="512 px samples to make (at least 4,000)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "clipa" / "bench-loader")
    ap.add_argument("--openclip-wds", type=Path, default=Path.home() / ".cache" / "clipa" / "openclip-wds")
    ap.add_argument("--one", choices=LOADERS, help=argparse.SUPPRESS)
    ap.add_argument("--shards", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _one(args)
    if (args.warmup + args.batches) * args.batch_size > args.samples:
        ap.error(f"warm-up plus timed batches must fit in one epoch of the {args.samples} samples")
    from clipa.data.resize import resize

    big = make_shards(args.cache, args.samples)
    small = resize(big, args.cache / f"{Path(big).parent.name}-{SMALL_SIDE}px", SMALL_SIDE, QUALITY,
                   progress=False)["output"]
    small = f"{small}/{Path(big).name}"
    extra = _openclip_path(args.openclip_wds)
    print(f"{args.samples} Flickr8k samples at {SOURCE_SIDE} px (JPEG q{QUALITY}) and pre-resized to "
          f"{SMALL_SIDE} px; {args.workers} workers, batch {args.batch_size}, {args.batches} timed batches after "
          f"{args.warmup}, torch 1 thread per process, best of {args.repeats}", flush=True)
    runs = [(name, size, big) for size in args.sizes for name in LOADERS]
    if 84 in args.sizes:
        runs += [("openclip", 84, small), ("clipa-per-crop", 84, small)]
    best: dict[tuple[str, int, str], float] = {}
    for r in range(args.repeats):
        for name, size, shards in runs:
            env = dict(os.environ)
            if name == "openclip" and extra:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, "--shards", shards, "--image-size", str(size)] + sys.argv[1:],
                env=env, capture_output=True, text=True,
            )
            if out.returncode:
                sys.exit(f"{name} run failed:\n{out.stderr[-3000:]}")
            rate = float(out.stdout.strip().splitlines()[-1]) / args.workers
            best[name, size, shards] = max(best.get((name, size, shards), 0.0), rate)
            src = SOURCE_SIDE if shards == big else SMALL_SIDE
            print(f"  run {r + 1} {name:15s} {size:4d} px from {src} px shards {rate:8.1f} images/s per worker",
                  flush=True)
    print(f"\nimages/s per worker (best of {args.repeats})")
    print(f"{'output':>8}{'source':>8}" + "".join(f"{n:>16}" for n in LOADERS) + f"{'per-crop/openclip':>19}")
    rows = [(s, big, SOURCE_SIDE) for s in args.sizes] + ([(84, small, SMALL_SIDE)] if 84 in args.sizes else [])
    for size, shards, src in rows:
        cells = [best.get((n, size, shards)) for n in LOADERS]
        print(f"{size:>6}px{src:>6}px" + "".join(f"{c:>16.1f}" if c else f"{'-':>16}" for c in cells)
              + f"{cells[2] / cells[0]:>19.2f}")
    if 84 not in args.sizes:
        return
    need, what = h100_pairs_per_second()
    print(f"\n{what}; an H100 at {MFU:.0%} MFU trains {need:,.0f} pairs/s")
    for label, shards in ((f"{SOURCE_SIDE} px", big), (f"{SMALL_SIDE} px", small)):
        rate = best["clipa-per-crop", 84, shards]
        print(f"worker cores per H100 (clipa per-crop, {label} shards): {need / rate:.1f} "
              f"({rate:.0f} images/s per core)")
    openclip = best["openclip", 84, big]
    print(f"worker cores per H100 (openclip, {SOURCE_SIDE} px shards): {need / openclip:.1f}")
    print(f"ratio clipa ({SMALL_SIDE} px shards) / openclip ({SOURCE_SIDE} px shards) at 84 px: "
          f"{best['clipa-per-crop', 84, small] / openclip:.2f}")
    print(f"ratio clipa/openclip at 84 px: {best['clipa-per-crop', 84, big] / openclip:.2f}")


if __name__ == "__main__":
    main()

"""How far per-crop reduced-scale decoding is from full decoding, and how much faster, from 512 px JPEGs.

The same random resized crop (scale 0.4-1.0, bicubic, antialiased; same seed per image) is cut
from the fully decoded image and by :func:`clipa.data.decode.decode_crop`, which decodes the
JPEG at the coarsest DCT scale (1/2, 1/4, 1/8) at which the crop drawn keeps the output size.
For each output size: the share of crops decoded at each scale, the mean absolute difference
(grey levels, 0-255) and PSNR of the uint8 outputs, and images/s of each path in this process
(one torch thread). Sources: the 512 px Flickr8k shards of ``benchmarks/loader.py`` (made and
cached on first use). Last line: per-crop decoding's speed-up and PSNR at 84 px.

    python benchmarks/decode_quality.py [--images 300]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2.functional import pil_to_tensor

from clipa.data.decode import decode_crop, plan_crop
from clipa.data.samples import decode_image
from clipa.data.sources import load_source
from loader import make_shards

SCALE, RATIO = (0.4, 1.0), (3 / 4, 4 / 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[84, 112, 224])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "clipa" / "bench-loader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    source = load_source(make_shards(args.cache, 4000))
    jpegs = [raw["jpg"] for _, raw in source.read(0, stop=args.images)]
    print(f"{len(jpegs)} JPEGs of {Image.open(io.BytesIO(jpegs[0])).size} px, one torch thread")
    print(f"{'output':>6} {'1/1':>5} {'1/2':>5} {'1/4':>5} {'1/8':>5} {'MAD':>6} {'PSNR dB':>8} "
          f"{'full/s':>8} {'per-crop/s':>11} {'speed-up':>9}")
    for size in args.sizes:
        crop = v2.RandomResizedCrop(size, scale=SCALE, ratio=RATIO, interpolation=InterpolationMode.BICUBIC,
                                    antialias=True)
        start = time.perf_counter()
        full = []
        for i, data in enumerate(jpegs):
            torch.default_generator.manual_seed(i)
            full.append(crop(pil_to_tensor(decode_image(data, 10**9))))
        full_rate = len(jpegs) / (time.perf_counter() - start)
        start = time.perf_counter()
        fast = []
        for i, data in enumerate(jpegs):
            torch.default_generator.manual_seed(i)
            fast.append(decode_crop(data, size, SCALE, RATIO))
        fast_rate = len(jpegs) / (time.perf_counter() - start)
        scales = Counter()
        for i, data in enumerate(jpegs):
            torch.default_generator.manual_seed(i)
            scales[plan_crop(Image.open(io.BytesIO(data)), size, SCALE, RATIO).reduction] += 1
        diff = torch.stack(full).double() - torch.stack(fast).double()
        mad, mse = diff.abs().mean().item(), diff.pow(2).mean().item()
        psnr = 10 * math.log10(255**2 / mse) if mse else math.inf
        shares = "".join(f"{scales[r] / len(jpegs):>6.0%}" for r in (1, 2, 4, 8))
        print(f"{size:>4}px{shares} {mad:>6.2f} {psnr:>8.1f} {full_rate:>8.0f} {fast_rate:>11.0f} "
              f"{fast_rate / full_rate:>8.1f}x", flush=True)
        if size == args.sizes[0]:
            last = f"per-crop decoding at {size} px: {fast_rate / full_rate:.1f}x full decoding's speed, PSNR {psnr:.1f} dB"
    print(last)


if __name__ == "__main__":
    main()

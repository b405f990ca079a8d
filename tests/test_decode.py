"""Per-crop reduced-scale decoding keeps the crop that decode-then-crop would take.

Reference: full decoding followed by torchvision's ``v2.RandomResizedCrop`` under the same
seed, and the geometry of a synthetic JPEG whose marks sit at known places.
"""

from __future__ import annotations

import io
import math
from collections import Counter

import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import InterpolationMode, RandomResizedCrop, v2
from torchvision.transforms.v2.functional import pil_to_tensor

from clipa.data.decode import decode_crop, plan_crop
from clipa.data.samples import BadSample, decode_image

SCALE, RATIO = (0.4, 1.0), (3 / 4, 4 / 3)
MARK, STEP = 32, 96  # white squares of MARK px every STEP px on a dark ground
WIDTH, HEIGHT = 512, 384


def marked_jpeg(width: int = WIDTH, height: int = HEIGHT) -> tuple[bytes, list[tuple[float, float]]]:
    """The JPEG and its marks' centres (x, y) in continuous source coordinates."""
    image = Image.new("RGB", (width, height), (20, 30, 40))
    draw = ImageDraw.Draw(image)
    centres = []
    for y0 in range(24, height - MARK, STEP):
        for x0 in range(24, width - MARK, STEP):
            draw.rectangle((x0, y0, x0 + MARK - 1, y0 + MARK - 1), fill=(255, 255, 255))
            centres.append((x0 + MARK / 2, y0 + MARK / 2))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue(), centres


def full_then_crop(data: bytes, size: int, seed: int, scale: tuple[float, float] = SCALE) -> torch.Tensor:
    crop = v2.RandomResizedCrop(size, scale=scale, ratio=RATIO, interpolation=InterpolationMode.BICUBIC,
                                antialias=True)
    torch.manual_seed(seed)
    return crop(pil_to_tensor(decode_image(data, 10**9)))


def centroid(image: torch.Tensor, x: float, y: float, radius: float) -> tuple[float, float]:
    """Brightness-weighted centre (output pixel-centre coordinates) of the mark near (x, y)."""
    x0, y0 = math.ceil(x - radius), math.ceil(y - radius)
    x1, y1 = math.floor(x + radius) + 1, math.floor(y + radius) + 1
    weight = (image[:, y0:y1, x0:x1].float().mean(0) - 40).clamp(min=0)  # [h, w] brightness above the ground
    ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


@pytest.mark.parametrize("size, width, height", [(84, 512, 384), (112, 512, 384), (224, 1024, 768)])
def test_marks_land_where_full_decoding_puts_them(size, width, height):
    data, centres = marked_jpeg(width, height)
    header = Image.open(io.BytesIO(data))
    reductions, checked = Counter(), 0
    for seed in range(24):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(header, list(SCALE), list(RATIO))
        torch.manual_seed(seed)
        reductions[plan_crop(header, size, SCALE, RATIO).reduction] += 1
        full = full_then_crop(data, size, seed)
        torch.manual_seed(seed)
        fast = decode_crop(data, size, SCALE, RATIO)
        assert fast.shape == full.shape == (3, size, size) and fast.dtype == torch.uint8
        half = MARK / 2 * size / min(w, h)  # a mark's half-side at the output size
        for cx, cy in centres:
            # where the crop's geometry puts the mark: output pixel i is centred on source left + (i + 0.5) w / S
            x, y = (cx - left) * size / w - 0.5, (cy - top) * size / h - 0.5
            if not (half + 2 <= x <= size - 3 - half and half + 2 <= y <= size - 3 - half):
                continue  # cut by the crop's edge
            expect = centroid(full, x, y, half + 2)
            got = centroid(fast, x, y, half + 2)
            assert abs(expect[0] - x) < 0.5 and abs(expect[1] - y) < 0.5  # the reference itself
            assert abs(got[0] - expect[0]) <= 1 and abs(got[1] - expect[1]) <= 1, (seed, cx, cy, got, expect)
            checked += 1
    assert checked > 50
    assert sum(n for r, n in reductions.items() if r > 1) >= 8, reductions  # reduced decoding was exercised


def test_crop_draws_equal_random_resized_crop_and_leave_the_rng_alike():
    """Same box as ``RandomResizedCrop.get_params`` on the decoded image, and the same RNG
    state after it, so augmentations drawn next (colour jitter) stay those of the full path."""
    data, _ = marked_jpeg()
    decoded = decode_image(data, 10**9)
    for seed in range(20):
        torch.manual_seed(seed)
        expect = RandomResizedCrop.get_params(decoded, list(SCALE), list(RATIO))
        after_expect = torch.rand(3)
        torch.manual_seed(seed)
        crop = plan_crop(Image.open(io.BytesIO(data)), 84, SCALE, RATIO)
        assert (crop.top, crop.left, crop.height, crop.width) == expect
        assert torch.equal(torch.rand(3), after_expect)
        assert crop.reduction == max(r for r in (1, 2, 4, 8) if min(crop.height, crop.width) >= r * 84)


def test_unreduced_crop_and_other_formats_are_pixel_exact():
    """With no reduction possible (or a PNG) the output is exactly decode-then-crop."""
    data, _ = marked_jpeg()
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    for payload, size in ((data, 224), (png.getvalue(), 84)):
        for seed in range(5):
            torch.manual_seed(seed)
            fast = decode_crop(payload, size, (0.9, 1.0), RATIO)  # crops of >= 330 px: no 1/2 at 224
            assert torch.equal(fast, full_then_crop(payload, size, seed, (0.9, 1.0)))


def test_bad_bytes_raise_the_sample_reasons():
    data, _ = marked_jpeg()
    with pytest.raises(BadSample, match="corrupt_image"):
        decode_crop(data[: len(data) // 3], 84, SCALE)
    with pytest.raises(BadSample, match="empty_image"):
        decode_crop(b"", 84, SCALE)
    with pytest.raises(BadSample, match="decompression_bomb"):
        decode_crop(data, 84, SCALE, max_pixels=WIDTH * HEIGHT - 1)

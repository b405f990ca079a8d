"""Per-crop reduced-scale decoding: draw the random resized crop first, then decode only as finely as it needs.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of the work (libjpeg
scales in the DCT, PIL's ``draft``). Bounding the scale by the smallest crop that
``data.scale`` allows (:func:`clipa.data.transforms.draft_size`) wastes most of that: at
84 px output a typical crop of a 512 px photo has 250-500 source pixels a side, enough for
1/2 or 1/4 scale. Here the crop is drawn from the header's size with torchvision's
``RandomResizedCrop.get_params`` (the same random draws, in the same order, as the crop of a
fully decoded image), the coarsest scale at which that crop still has ``size`` pixels a
side is chosen, and the crop is cut at the scaled coordinates. The crop's geometry is the
one drawn (to half a scaled pixel, under half an output pixel); only the resampling source
differs (the DCT's own downscaling instead of full-resolution pixels).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2.functional import pil_to_tensor, resize

from ..config import DataConfig
from .samples import BadSample, decode_image, open_image
from .transforms import augment_pixels, draft_size, train_pixels

REDUCTIONS = (8, 4, 2)  # libjpeg's DCT scales below 1, coarsest first
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratio range


@dataclass(frozen=True)
class Crop:
    """A crop box in source pixels and the reduction it is decoded at (1, 2, 4 or 8)."""

    top: int
    left: int
    height: int
    width: int
    reduction: int


def plan_crop(image: Image.Image, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> Crop:
    """Draw a random resized crop of the (opened, undecoded) image from torch's global RNG,
    exactly as ``RandomResizedCrop`` would on the decoded image, and the coarsest reduction
    at which both of its sides keep at least ``size`` pixels."""
    top, left, height, width = RandomResizedCrop.get_params(image, list(scale), list(ratio))
    reduction = next((r for r in REDUCTIONS if min(height, width) >= r * size), 1)
    return Crop(top, left, height, width, reduction)


def decode_crop(data: bytes, size: int, scale: tuple[float, float], ratio: tuple[float, float] = RATIO,
                max_pixels: int = 89_478_485) -> torch.Tensor:
    """Image bytes -> uint8 ``[3, size, size]`` random resized crop (bicubic, antialiased).

    Same random draws and the same crop box as decoding in full and applying
    ``v2.RandomResizedCrop(size, scale, ratio)``; a JPEG is decoded at the crop's reduction,
    other formats in full. Bad bytes raise :class:`~clipa.data.samples.BadSample` as
    :func:`~clipa.data.samples.decode_image` does.
    """
    planned: list[tuple[Crop, int]] = []  # (crop, reduction applied), set before the pixels are decoded

    def draft(image: Image.Image) -> None:
        crop = plan_crop(image, size, scale, ratio)
        applied = 1
        if crop.reduction > 1 and image.format == "JPEG":
            # PIL picks the largest DCT scale whose output still covers this size: exactly crop.reduction
            drafted = image.draft("RGB", (image.width // crop.reduction, image.height // crop.reduction))
            applied = crop.reduction if drafted is not None else 1
        planned.append((crop, applied))

    image = decode_image(data, max_pixels, before_load=draft)
    crop, r = planned[0]
    # libjpeg's scaled pixel j covers source pixels [j*r, (j+1)*r): the box scales by 1/r
    left, top = round(crop.left / r), round(crop.top / r)
    right = min(round((crop.left + crop.width) / r), image.width)
    bottom = min(round((crop.top + crop.height) / r), image.height)
    pixels = pil_to_tensor(image.crop((left, top, right, bottom)))  # [3, h', w'] uint8
    return resize(pixels, [size, size], InterpolationMode.BICUBIC, antialias=True)  # [3, size, size]


def _decode_then(max_pixels: int, draft: int, pixels: Callable, data: bytes) -> torch.Tensor:
    """Decode (JPEGs at the fixed reduced scale ``draft``), then crop and augment the uint8 tensor."""
    return pixels(pil_to_tensor(decode_image(data, max_pixels, draft)))


def _crop_then(size: int, scale: tuple[float, float], max_pixels: int, pixels: Callable, data: bytes) -> torch.Tensor:
    """Crop while decoding (:func:`decode_crop`), then augment."""
    return pixels(decode_crop(data, size, scale, max_pixels=max_pixels))


def image_decoder(image_size: int, data: DataConfig) -> Callable[[bytes], torch.Tensor]:
    """Image bytes -> uint8 ``[3, S, S]`` the loader batches, as ``data`` says: the training crop
    (``data.decode_scale``) and augmentations. Draws its randomness from torch's global RNG (the
    stream seeds it per sample); picklable, for workers."""
    if data.decode_scale == "worst_crop":
        return partial(_decode_then, data.max_image_pixels, draft_size(image_size, data.scale[0]),
                       train_pixels(image_size, data))
    return partial(_crop_then, image_size, tuple(data.scale), data.max_image_pixels, augment_pixels(data))


# ---------------------------------------------------------------------------- decoding on the GPU

_EOI = b"\xff\xd9"  # a JPEG's end-of-image marker: its absence means a truncated file


def _jpeg_or_pixels(cpu: Callable[[bytes], torch.Tensor], max_pixels: int, data: bytes) -> torch.Tensor:
    """In a loader worker with ``data.decode: cuda``: a whole JPEG's bytes as a 1-D uint8 tensor
    for the GPU (its header checked here), anything else decoded and cropped here by ``cpu``."""
    image = open_image(data, max_pixels)
    if image.format == "JPEG" and _EOI in data[-64:]:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # [n_bytes]
    return cpu(data)  # [3, S, S]


def worker_decoder(image_size: int, data: DataConfig) -> Callable[[bytes], torch.Tensor]:
    """What loader workers do with image bytes: decode (``data.decode: cpu``, see
    :func:`image_decoder`) or, for the GPU, only check JPEGs and pass their bytes on."""
    cpu = image_decoder(image_size, data)
    return partial(_jpeg_or_pixels, cpu, data.max_image_pixels) if data.decode == "cuda" else cpu


class DeviceDecoder:
    """JPEGs decoded in batches on the training device (``data.decode: cuda``: nvJPEG through
    ``torchvision.io.decode_jpeg``), then cropped, resized and augmented there.

    Each sample's randomness is re-drawn from its own seed, as a loader worker would draw it,
    so the crop is the one the CPU path takes from the full image (the seeded draws come
    first from torch's CPU generator, whose state is restored afterwards). A JPEG the GPU
    codec refuses is decoded on the CPU instead (PIL); one neither can decode is counted
    as ``corrupt_image`` in ``skipped`` and left black.
    """

    def __init__(self, image_size: int, data: DataConfig, device: torch.device | str):
        self.size, self.scale, self.device = image_size, tuple(data.scale), torch.device(device)
        self.augment = augment_pixels(data)
        self.cpu = image_decoder(image_size, data)
        self.skipped: Counter = Counter()

    def check(self) -> None:
        """Raise ValueError (one line) where the device or its JPEG codec is missing."""
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("data.decode: cuda needs a CUDA GPU, and torch sees none (use data.decode=cpu)")
        probe = io.BytesIO()
        Image.new("RGB", (16, 16)).save(probe, "JPEG")
        try:
            decode_jpeg(torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8), device=self.device)
        except (RuntimeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"data.decode: cuda: torchvision cannot decode JPEGs on {self.device} here "
                             f"({first}); use data.decode=cpu") from None

    def _decode(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        try:
            return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)  # [3, H, W] each
        except RuntimeError:  # one bad image fails the batch: find it
            out: list[torch.Tensor | None] = []
            for jpeg in jpegs:
                try:
                    out.append(decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def __call__(self, items: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        """A worker's batch (uint8 ``[3, S, S]`` crops and 1-D JPEG bytes, with each sample's seed)
        -> uint8 ``[B, 3, S, S]`` on the device."""
        out = torch.empty(len(items), 3, self.size, self.size, dtype=torch.uint8, device=self.device)
        slots = [i for i, x in enumerate(items) if x.dim() == 1]
        for i, x in enumerate(items):
            if x.dim() == 3:
                out[i] = x.to(self.device, non_blocking=True)
        saved = torch.get_rng_state()
        try:
            for slot, decoded in zip(slots, self._decode([items[i] for i in slots])):
                torch.default_generator.manual_seed(seeds[slot])
                if decoded is None:
                    out[slot] = self._on_cpu(items[slot])
                    continue
                top, left, h, w = RandomResizedCrop.get_params(decoded, list(self.scale), list(RATIO))
                crop = resize(decoded[:, top:top + h, left:left + w], [self.size, self.size],
                              InterpolationMode.BICUBIC, antialias=True)  # [3, S, S]
                out[slot] = self.augment(crop)
        finally:
            torch.set_rng_state(saved)
        return out

    def _on_cpu(self, jpeg: torch.Tensor) -> torch.Tensor:
        """A JPEG the device codec refused, through the CPU path (same seeded draws), or black."""
        try:
            return self.cpu(jpeg.numpy().tobytes())
        except BadSample as e:
            self.skipped[e.reason] += 1
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8)

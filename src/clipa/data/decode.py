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

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2.functional import pil_to_tensor, resize

from ..config import DataConfig
from .samples import decode_image
from .transforms import augment_pixels, draft_size, eval_pixels, train_pixels

REDUCTIONS = (8, 4, 2)  # libjpeg's DCT scales below 1, coarsest first


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


def decode_crop(data: bytes, size: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
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


def image_decoder(image_size: int, data: DataConfig, augment: bool = True) -> Callable[[bytes], torch.Tensor]:
    """Image bytes -> uint8 ``[3, S, S]`` the loader batches, as ``data`` says: the training crop
    (``data.decode_scale``) and augmentations, or (``augment=False``) the centre crop. Draws its
    randomness from torch's global RNG (the stream seeds it per sample); picklable, for workers."""
    if not augment:
        return partial(_decode_then, data.max_image_pixels, image_size, eval_pixels(image_size))
    if data.decode_scale == "worst_crop":
        return partial(_decode_then, data.max_image_pixels, draft_size(image_size, data.scale[0]),
                       train_pixels(image_size, data))
    return partial(_crop_then, image_size, tuple(data.scale), data.max_image_pixels, augment_pixels(data))

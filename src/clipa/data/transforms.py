"""Image transforms (torchvision.transforms.v2): CLIPA's training crop and the evaluation resize.

``build_train_transform`` / ``build_eval_transform`` take a PIL image (or an image tensor)
and give a float tensor normalised with CLIP's mean and std; ``build_eval_transform`` is the
one evaluation transform (every evaluation set uses it), OpenCLIP's to the pixel. The loader runs the same
pixel operations on uint8 tensors per sample (:func:`train_pixels`, :func:`eval_pixels`;
torch's bicubic resampling is faster than PIL's and differs from it by a grey level or two),
passes uint8 batches between processes (a quarter of the bytes) and normalises whole
batches at once (:func:`normalise`). The image size follows the stage, so the trainer
builds these per stage.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode, v2

from ..config import DataConfig
from . import CLIP_MEAN, CLIP_STD

_MIN_ASPECT = 3 / 4  # RandomResizedCrop's default ratio range is (3/4, 4/3)


def train_pixels(image_size: int, data_cfg: DataConfig) -> v2.Compose:
    """Random resized crop (bicubic, ``data.scale``: 0.4-1.0 by default, as CLIPA), then
    :func:`augment_pixels`."""
    return v2.Compose([v2.RandomResizedCrop(image_size, scale=tuple(data_cfg.scale),
                                            interpolation=InterpolationMode.BICUBIC, antialias=True),
                       augment_pixels(data_cfg)])


def augment_pixels(data_cfg: DataConfig) -> v2.Compose:
    """What follows the crop: the optional colour jitter (applied with ``color_jitter_prob``)
    and random grayscale."""
    ops: list = []
    if data_cfg.color_jitter is not None:
        ops.append(v2.RandomApply([v2.ColorJitter(*data_cfg.color_jitter)], p=data_cfg.color_jitter_prob))
    if data_cfg.grayscale_prob > 0:
        ops.append(v2.RandomGrayscale(p=data_cfg.grayscale_prob))
    return v2.Compose(ops or [v2.Identity()])


def eval_pixels(image_size: int) -> v2.Compose:
    """Resize the short side (bicubic) and take the centre square."""
    return v2.Compose([
        v2.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(image_size),
    ])


def _full(pixels: v2.Compose) -> v2.Compose:
    """On a PIL image the pixel operations run in PIL, as in OpenCLIP (same output, same seed)."""
    return v2.Compose([v2.RGB(), pixels, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(CLIP_MEAN, CLIP_STD)])


def build_train_transform(image_size: int, data_cfg: DataConfig) -> v2.Compose:
    """PIL image -> augmented, normalised ``[3, S, S]`` float tensor (see :func:`train_pixels`)."""
    return _full(train_pixels(image_size, data_cfg))


def build_eval_transform(image_size: int) -> v2.Compose:
    """PIL image (any mode) -> resized, centre-cropped, normalised ``[3, S, S]`` float tensor:
    OpenCLIP's ``image_transform(size, is_train=False)``. As there, the image is converted to
    RGB after cropping, so palette images are resized as PIL resizes them (nearest) and RGBA
    ones with their alpha (premultiplied), exactly as an OpenCLIP evaluation sees them."""
    return v2.Compose([eval_pixels(image_size), v2.RGB(), v2.PILToTensor(), v2.Lambda(_unit_float),
                       v2.Normalize(CLIP_MEAN, CLIP_STD)])


def _unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> [0, 1] float by dividing by 255, as torchvision's ToTensor (ToDtype multiplies by
    1/255, which differs in the last bit)."""
    return image.float().div(255)


def normalise(images: torch.Tensor, dtype: torch.dtype = torch.float32, mean: tuple[float, ...] = CLIP_MEAN,
              std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` (or ``[3, S, S]``) -> ``dtype`` on the same device, as ToDtype(scale=True)
    then Normalize (to 1e-6); CLIP's mean and std unless a built-in data set declares its own.
    Loaders hand over uint8 (a quarter of the bytes to copy); the trainer calls this after the
    copy to its device, so on a GPU the CPU does none of this work."""
    out = images.to(torch.float32)  # a new tensor: the caller's uint8 batch is left as it was
    for c in range(3):  # in place with Python scalars: the fastest form on a CPU, no constants to move
        out[..., c, :, :].sub_(255 * mean[c]).div_(255 * std[c])
    return out.to(dtype)


def draft_size(image_size: int, min_scale: float) -> int:
    """The short side a JPEG may be decoded down to (libjpeg's 1/2, 1/4, 1/8 scaling) so that
    even the smallest random crop still has at least ``image_size`` source pixels per side."""
    return math.ceil(image_size / math.sqrt(min_scale * _MIN_ASPECT))

"""Image transforms (torchvision.transforms.v2): CLIPA's training crop and the evaluation resize.

``build_train_transform`` / ``build_eval_transform`` take a PIL image (or an image tensor)
and give a float tensor normalised by the model's ``PreprocessConfig`` (its mean and std; the
evaluation resize by its interpolation and resize mode); ``build_eval_transform`` is the one
evaluation transform (every evaluation set uses it), OpenCLIP's to the pixel. The loader runs the same
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

from ..config import DataConfig, PreprocessConfig

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


class _LongestTo:
    """Resize so that the longer side is ``size`` (OpenCLIP's ``ResizeKeepRatio(longest=1)``:
    each side rounded from the same ratio)."""

    def __init__(self, size: int, interpolation: InterpolationMode):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        h, w = v2.functional.get_size(image)
        ratio = max(h, w) / self.size
        return v2.functional.resize(image, [round(h / ratio), round(w / ratio)], self.interpolation, antialias=True)


def eval_pixels(image_size: int, preprocess: PreprocessConfig) -> v2.Compose:
    """The evaluation resize of ``preprocess.resize_mode``: the short side to ``image_size`` and
    the centre square ("shortest"), the long side and a centred black pad ("longest"), or both
    sides at once ("squash"), resampled by ``preprocess.interpolation``."""
    how = InterpolationMode(preprocess.interpolation)
    if preprocess.resize_mode == "squash":
        return v2.Compose([v2.Resize((image_size, image_size), interpolation=how, antialias=True)])
    if preprocess.resize_mode == "longest":  # CenterCrop pads a smaller side with zeros, centred as OpenCLIP
        return v2.Compose([_LongestTo(image_size, how), v2.CenterCrop(image_size)])
    return v2.Compose([v2.Resize(image_size, interpolation=how, antialias=True), v2.CenterCrop(image_size)])


def build_train_transform(image_size: int, data_cfg: DataConfig, preprocess: PreprocessConfig) -> v2.Compose:
    """PIL image -> augmented ``[3, S, S]`` float tensor normalised by ``preprocess`` (see
    :func:`train_pixels`); on a PIL image the pixel operations run in PIL, as in OpenCLIP."""
    return v2.Compose([v2.RGB(), train_pixels(image_size, data_cfg), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess.mean, preprocess.std)])


def build_eval_transform(image_size: int, preprocess: PreprocessConfig) -> v2.Compose:
    """PIL image (any mode) -> resized, normalised ``[3, S, S]`` float tensor by ``preprocess``:
    OpenCLIP's ``image_transform(size, is_train=False, ...)`` with the same preprocess_cfg. As
    there, the image is converted to RGB after resizing, so palette images are resized as PIL
    resizes them (nearest) and RGBA ones with their alpha (premultiplied), exactly as an
    OpenCLIP evaluation sees them."""
    return v2.Compose([eval_pixels(image_size, preprocess), v2.RGB(), v2.PILToTensor(), v2.Lambda(_unit_float),
                       v2.Normalize(preprocess.mean, preprocess.std)])


def _unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> [0, 1] float by dividing by 255, as torchvision's ToTensor (ToDtype multiplies by
    1/255, which differs in the last bit)."""
    return image.float().div(255)


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` (or ``[3, S, S]``) -> ``dtype`` on the same device, as ToDtype(scale=True)
    then Normalize (to 1e-6), with the model's ``mean`` and ``std`` (``PreprocessConfig``).
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

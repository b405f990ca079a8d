"""Moved: evaluation sets are read by :mod:`clipa.data.eval_sets`, with the evaluation transform
``clipa.data.transforms.build_eval_transform``. These names remain only for ``eval/cli.py``
until the command moves to ``clipa.cli``; delete this file then."""

from ..data.eval_sets import IMAGENET_VARIANTS, imagenet_set

__all__ = ["IMAGENET_VARIANTS", "eval_transform", "imagenet_set"]


def eval_transform(image_size: int):
    from ..data.transforms import build_eval_transform  # torchvision: not at ``clipa --help``

    return build_eval_transform(image_size)

"""Moved: evaluation sets are read by :mod:`clipa.data.eval_sets`, with the evaluation transform
of :mod:`clipa.data.transforms`. These names remain only for ``eval/cli.py`` until the command
moves to ``clipa.cli``; delete this file then."""

from ..data.eval_sets import IMAGENET_VARIANTS, imagenet_set
from ..data.transforms import build_eval_transform as eval_transform

__all__ = ["IMAGENET_VARIANTS", "eval_transform", "imagenet_set"]

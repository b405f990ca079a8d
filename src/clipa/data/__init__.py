"""Training data: webdataset shards, CSV/TSV and image folders; robust to bad samples; exactly resumable.

``build_train_loader`` is the entry point the trainer uses (the built-in ``digits`` data is
served by :mod:`clipa.data.digits`); ``clipa data convert | inspect`` live in :mod:`.tools`.
Names are imported on first use, so the command line starts without torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainLoader": "loader",
    "build_train_loader": "loader",
    "EmptySourceError": "stream",
    "REASONS": "samples",
    "CLIP_MEAN": "transforms",
    "CLIP_STD": "transforms",
    "build_eval_transform": "transforms",
    "build_train_transform": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

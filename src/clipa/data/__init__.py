"""Data: webdataset shards, CSV/TSV and image folders; robust to bad samples; exactly resumable.

``build_train_loader`` is the entry point the trainer uses, for every source (the built-in
``digits`` included, :mod:`clipa.data.digits`); ``open_data`` opens an evaluation set
(:mod:`.eval_sets`), read by the same shard reader and sample decoding; ``clipa data convert |
inspect`` keep their logic in :mod:`.tools`.
Names are imported on first use, so the command line starts without torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

# OpenAI CLIP's pixel normalisation, shared by the training transforms, evaluation and export.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_EXPORTS = {
    "Loader": "loader",
    "TrainLoader": "loader",
    "build_train_loader": "loader",
    "EmptySourceError": "stream",
    "EvalSet": "eval_sets",
    "open_data": "eval_sets",
    "REASONS": "samples",
    "build_eval_transform": "transforms",
    "build_train_transform": "transforms",
}

__all__ = sorted([*_EXPORTS, "CLIP_MEAN", "CLIP_STD"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

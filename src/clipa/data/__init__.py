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
    "built_in": "builtin",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)

"""The CHECKPOINT argument of ``clipa eval`` and ``clipa export``: a clipa checkpoint or run folder,
or a plain weights file (OpenCLIP layout) whose architecture ``--model`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models import create_model
from ..train.checkpoint import load_model


def load_model_arg(checkpoint: str | Path, model_name: str | None = None) -> tuple[Any, str, Any]:
    """(model in eval mode, its name, the run config or None) from a clipa checkpoint or a weights file."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if model_name is not None:
        return create_model(model_name, pretrained=path).eval(), model_name, None
    if path.is_file():
        raise ValueError(f"{path} is a weights file: name its architecture with --model (e.g. --model ViT-B-32)")
    model, run_cfg = load_model(path)  # already in eval mode
    return model, run_cfg.model, run_cfg

"""Checkpoints: tensors in safetensors, everything else in JSON; written atomically.

A checkpoint is a folder ``step_00000123/`` with ``model.safetensors``,
``optimizer.safetensors``, ``rng.safetensors`` and ``state.json`` (step, stage, run
config, optimizer hyper-parameters, data-loader position). It is written under a
temporary name and renamed, so a crash never leaves a half-written checkpoint behind.
An fsdp run (``clipa.parallel``) writes ``sharded/`` (torch.distributed.checkpoint: each
rank's shards of model and optimizer) instead of the model and optimizer files; its
model is read whole from there, or ``parallel.consolidate`` adds ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..config import RunConfig, from_dict

_STEP_DIR = re.compile(r"^step_(\d+)$")
SHARDED_DIR = "sharded"


def _flatten_optimizer(opt_sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": opt_sd["param_groups"], "scalars": {}}
    for idx, state in opt_sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                meta["scalars"][f"{idx}.{name}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    if generator is not None:
        out["generator"] = generator.get_state()
    return out


def set_rng_state(states: dict[str, torch.Tensor], generator: torch.Generator | None) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if generator is not None and "generator" in states:
        generator.set_state(states["generator"])


def save_checkpoint(
    root: str | Path,
    step: int,
    model_sd: dict[str, torch.Tensor] | None,
    optimizer_sd: dict | None,
    state: dict,
    rng: dict[str, torch.Tensor] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step_{step}`` atomically and return its path. ``write_extra(tmp)`` adds
    files before the rename (the fsdp shards, when ``model_sd`` is None)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if model_sd is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
    if write_extra is not None:
        write_extra(tmp)
    state = dict(state)
    if optimizer_sd is not None:
        tensors, meta = _flatten_optimizer(optimizer_sd)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    if rng is not None:
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, if any."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / "state.json").exists()
    ]
    return max(steps)[1] if steps else None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Everything a resume needs: model tensors, optimizer state, RNG states and JSON state."""
    path = Path(path)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{path} is not a clipa checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text())
    out: dict[str, Any] = {"state": state, "model": model_tensors(path)}
    if (path / "optimizer.safetensors").exists():
        out["optimizer"] = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    if (path / "rng.safetensors").exists():
        out["rng"] = load_file(str(path / "rng.safetensors"))
    return out


def run_config_of(state: dict) -> RunConfig:
    return from_dict(RunConfig, state["config"])


def load_model(path: str | Path):
    """A trained model (in eval mode, at its last stage's sizes) and its run config."""
    from ..models import create_model

    path = Path(path)
    if path.is_dir() and not (path / "state.json").exists():
        latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no clipa checkpoint found in {path}")
        path = latest
    state = json.loads((path / "state.json").read_text())
    cfg = run_config_of(state)
    model = create_model(cfg.model, **cfg.model_overrides)
    load_weights(model, model_tensors(path))
    return model.eval(), cfg


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The model weights: ``model.safetensors``, or read whole from the shards of an fsdp run."""
    if (path / "model.safetensors").exists() or not (path / SHARDED_DIR).is_dir():
        return load_file(str(path / "model.safetensors"))
    from ..parallel import read_sharded_model

    return read_sharded_model(path / SHARDED_DIR)


def load_weights(model, sd: dict[str, torch.Tensor]) -> None:
    """Move a model to the image grid and text length the weights were saved at, then load them (strict)."""
    g = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    size = g * model.visual.cfg.patch_size
    if size != model.visual.image_size:
        model.visual.set_image_size(size)
    if sd["positional_embedding"].shape[0] != model.context_length:
        model.set_context_length(sd["positional_embedding"].shape[0])
    model.load_state_dict(sd, strict=True)

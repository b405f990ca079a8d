"""Checkpoints: the only code that knows what one is. Tensors in safetensors, everything
else in JSON; written atomically.

A run folder holds ``checkpoints/step_00000123/``, each with ``state.json`` (step, stage,
run config, optimizer hyper-parameters, data-loader positions) and either

- single-file (one process, or ddp: rank 0 writes): ``model.safetensors``,
  ``optimizer.safetensors`` and ``rng.safetensors``; or
- sharded (fsdp): ``sharded/``, every rank's shards of model and optimizer written with
  torch.distributed.checkpoint, plus ``rng.safetensors``. Its model is read whole in one
  process; ``consolidate`` adds ``model.safetensors`` beside the shards.

A step folder is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint behind. Each rank's RNG state and data-loader position are kept, so
a resume under the same number of processes continues every rank exactly.

``resolve`` is the one place that decides what a path names (torchtitan's
``_find_load_step``): a run folder, its ``checkpoints/`` folder, a step folder or a bare
weights file (OpenCLIP's, or an export). Everything that loads (``load_model``,
``clipa.create_model(pretrained=...)``, the trainer's resume) goes through it, so a sharded step
folder works wherever a single-file one does. Only safe formats are read: safetensors, and
torch files with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .config import ConfigError, RunConfig, from_dict
from .distributed import DistInfo, barrier, is_sharded
from .models import CLIP, adapt_state_dict, load_weights
from .models import create_model as build_model

_STEP_DIR = re.compile(r"^step_(\d+)$")
SHARDED_DIR = "sharded"
MODEL_FILE = "model.safetensors"


# ----------------------------------------------------------------------------- what a path names


@dataclass(frozen=True)
class Found:
    """What ``resolve`` found: a step folder (``single`` or ``sharded``) or a bare ``weights`` file."""

    kind: Literal["single", "sharded", "weights"]
    path: Path

    @property
    def is_step(self) -> bool:
        """A clipa step folder (it has a run config, an optimizer and RNG states)."""
        return self.kind != "weights"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete step folder with the highest step under ``root``, if any."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / "state.json").exists()
    ]
    return max(steps)[1] if steps else None


def resolve(path: str | Path) -> Found:
    """Name what ``path`` holds. In order: a weights file; a step folder (``state.json``);
    the latest step of a run folder's ``checkpoints/`` or of a ``checkpoints/`` folder; a
    folder holding only ``model.safetensors``. Anything else is a FileNotFoundError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        return Found("weights", path)
    if (path / "state.json").exists():
        if (path / SHARDED_DIR).is_dir():
            return Found("sharded", path)
        if (path / MODEL_FILE).exists():
            return Found("single", path)
        raise FileNotFoundError(f"checkpoint {path} is damaged: state.json but neither {MODEL_FILE} nor {SHARDED_DIR}/")
    latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if latest is not None:
        return resolve(latest)
    if (path / MODEL_FILE).exists():
        return Found("weights", path / MODEL_FILE)
    raise FileNotFoundError(f"no clipa checkpoint in {path}: no state.json, no step_* folder, no {MODEL_FILE}")


def resume_from(setting: str | None, checkpoints: Path) -> Path | None:
    """The step folder ``train.resume`` names: None (start afresh), "latest" (the newest
    under this run's ``checkpoints`` folder, or afresh when there is none yet) or a path."""
    if setting is None:
        return None
    if setting == "latest":
        return latest_checkpoint(checkpoints)
    try:
        found = resolve(setting)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"train.resume={setting}: {e}") from None
    if not found.is_step:
        raise ConfigError(f"train.resume={setting} is a weights file, not a clipa checkpoint: "
                         "start from it with pretrained= instead")
    return found.path


# ----------------------------------------------------------------------------- reading weights


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from anything ``resolve`` accepts (a sharded step read whole, in
    one process, on CPU). Torch files are read with ``weights_only=True``; a wrapper's
    ``state_dict`` key and DDP's ``module.`` prefix are taken off."""
    found = resolve(path)
    if found.kind == "sharded" and not (found.path / MODEL_FILE).exists():
        return read_sharded_model(found.path / SHARDED_DIR)
    file = found.path if found.kind == "weights" else found.path / MODEL_FILE
    if file.suffix == ".safetensors":
        sd = load_file(str(file))
    else:
        sd = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{file} does not hold a state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def run_config(found: Found) -> RunConfig | None:
    """The run config a step folder was trained with (None for a bare weights file)."""
    if not found.is_step:
        return None
    return from_dict(RunConfig, json.loads((found.path / "state.json").read_text())["config"])


def load_pretrained(model: CLIP, path: str | Path) -> CLIP:
    """Load the weights of anything ``resolve`` accepts into ``model`` (OpenCLIP or clipa
    layout, strict); the weights' position tables are resized to the model's image grid and
    text length (OpenCLIP weights at another resolution)."""
    model.load_state_dict(adapt_state_dict(read_weights(path), model), strict=True)
    return model


def load_model(path: str | Path, model_name: str | None = None) -> tuple[CLIP, RunConfig | None]:
    """A model in eval mode and its run config (None for a bare weights file).

    A clipa checkpoint rebuilds its own architecture at its last stage's sizes; a weights
    file needs ``model_name`` (a registry name), and with one given any path loads into
    that architecture at its registry sizes.
    """
    found = resolve(path)
    cfg = run_config(found)
    if model_name is not None:
        return load_pretrained(build_model(model_name), found.path).eval(), cfg
    if cfg is None:
        raise ValueError(f"{found.path} is a weights file: name its architecture (e.g. --model ViT-B-32)")
    model = build_model(cfg.model, **cfg.model_overrides)
    load_weights(model, read_weights(found.path))
    return model.eval(), cfg


def read_sharded_model(shards: str | Path) -> dict[str, torch.Tensor]:
    """The whole model state dict from a ``sharded/`` folder, in one process, on CPU."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(shards)).read_metadata().state_dict_metadata
    sd = {
        k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    _dcp_load({"model": sd}, shards, no_dist=True)
    return sd


def _dcp_load(state: dict, shards: str | Path, no_dist: bool) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # it warns about no_dist even when asked for it
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(shards), no_dist=no_dist)


def consolidate(path: str | Path) -> Path:
    """Write ``model.safetensors`` into a sharded step folder, so that it loads anywhere as
    a single-file checkpoint (the optimizer stays sharded; resuming reads it under any
    number of processes). Returns the file."""
    found = resolve(path)
    if found.kind != "sharded":
        raise FileNotFoundError(f"{found.path} has no {SHARDED_DIR}/ folder: not a sharded checkpoint")
    out = found.path / MODEL_FILE
    tmp = found.path / f".{MODEL_FILE}.tmp"
    save_file({k: v.contiguous() for k, v in read_sharded_model(found.path / SHARDED_DIR).items()}, str(tmp))
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- RNG state


_CUDA_KEY = re.compile(r"^cuda(\d+)$")
_GENERATOR_KEY = re.compile(r"^generator(?:_([a-z]+))?$")  # "generator_cuda"; plain "generator" before


def rng_state(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """torch's CPU and CUDA generators and the masking generator, for an exact resume. The
    masking generator's key names its device type: a CPU (Mersenne Twister) state and a CUDA
    (Philox seed and offset) state are different things."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    if generator is not None:
        out[f"generator_{generator.device.type}"] = generator.get_state()
    return out


def set_rng_state(states: dict[str, torch.Tensor], generator: torch.Generator | None) -> None:
    """Restore ``rng_state``'s output on this machine, whatever machine wrote it: CUDA states
    by device number (cuda2 before cuda10), as many as there are GPUs; the masking generator
    via ``restore_generator``."""
    torch.set_rng_state(states["cpu"])
    cuda = sorted((int(m.group(1)), v) for k, v in states.items() if (m := _CUDA_KEY.match(k)))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda][: torch.cuda.device_count()])
    if generator is not None:
        restore_generator(generator, states)


def restore_generator(generator: torch.Generator, states: dict[str, torch.Tensor]) -> None:
    """Set the masking generator from a checkpoint's states. Written on the same device type,
    the stream continues exactly. From another one (a GPU checkpoint resumed on CPU, or back)
    the saved state cannot be converted, so the generator is re-seeded from a digest of it:
    the resumed run is deterministic, though its masks differ from the writer's."""
    found = [(m.group(1), v) for k, v in states.items() if (m := _GENERATOR_KEY.match(k))]
    if not found:
        return
    device_type, state = found[0]
    if device_type in (None, generator.device.type):  # None: an older checkpoint, type unnamed
        try:
            generator.set_state(state)
            return
        except RuntimeError:  # the state of another device type
            pass
    digest = hashlib.sha256(state.numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# ----------------------------------------------------------------------------- writing


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


def _write_step(
    root: Path,
    step: int,
    model_sd: dict[str, torch.Tensor] | None,
    optimizer_sd: dict | None,
    state: dict,
    rng: dict[str, torch.Tensor],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step_{step}`` atomically and return its path. ``write_extra(tmp)`` adds
    files before the rename (the fsdp shards, when ``model_sd`` is None)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if model_sd is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_sd.items()}, str(tmp / MODEL_FILE))
    if write_extra is not None:
        write_extra(tmp)
    state = dict(state)
    if optimizer_sd is not None:
        tensors, meta = _flatten_optimizer(optimizer_sd)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_checkpoint(root: str | Path, step: int, wrapped: nn.Module, model: nn.Module, optimizer,
                    state: dict, rng: dict[str, torch.Tensor], info: DistInfo) -> None:
    """Write step ``step`` under ``root`` (a collective under torchrun): single-file from
    rank 0 for one process or ddp, sharded from every rank for fsdp. ``state`` is the JSON
    part, ``rng`` this rank's ``rng_state``; every rank's RNG and loader position are kept."""
    root = Path(root)
    if info.world_size == 1:
        _write_step(root, step, model.state_dict(), optimizer.state_dict(), state, rng)
        return
    import torch.distributed as dist

    per_rank: list[Any] = [None] * info.world_size
    dist.all_gather_object(per_rank, {"rng": rng, "loader": state.get("loader")})
    state = {**state, "world_size": info.world_size, "loader_ranks": [p["loader"] for p in per_rank]}
    rngs = {f"rank{r}.{k}" if r else k: v for r, p in enumerate(per_rank) for k, v in p["rng"].items()}
    if not is_sharded(wrapped):
        if info.is_main:
            _write_step(root, step, model.state_dict(), optimizer.state_dict(), state, rngs)
        barrier(info)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    shards = root / f".tmp-{SHARDED_DIR}-step_{step:08d}"
    dcp.save({"model": get_model_state_dict(wrapped), "optimizer": get_optimizer_state_dict(wrapped, optimizer)},
             checkpoint_id=shards)
    if info.is_main:
        _write_step(root, step, None, None, state, rngs,
                    write_extra=lambda tmp: os.replace(shards, tmp / SHARDED_DIR))
    barrier(info)


# ----------------------------------------------------------------------------- resuming


def read_checkpoint(path: str | Path, info: DistInfo) -> dict[str, Any]:
    """Everything a resume needs from a step folder (anything ``resolve`` takes to one):
    ``path``, ``state`` (JSON), ``model`` tensors (whole), ``optimizer`` (single-file only;
    ``load_optimizer`` reads shards itself) and this rank's ``rng``: those of rank 0 when the
    checkpoint was written by one process; a rank the checkpoint has no state for keeps its
    fresh seeds. Under the same number of processes each rank also gets its own loader position."""
    found = resolve(path)
    if not found.is_step:
        raise FileNotFoundError(f"{found.path} is not a clipa checkpoint (no state.json)")
    path = found.path
    state = json.loads((path / "state.json").read_text())
    out: dict[str, Any] = {"path": path, "state": state, "model": read_weights(path)}
    if (path / "optimizer.safetensors").exists():
        out["optimizer"] = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    saved_world = state.get("world_size", 1)
    if saved_world > 1 and saved_world == info.world_size:
        state["loader"] = state["loader_ranks"][info.rank]
    if (path / "rng.safetensors").exists():
        rngs = load_file(str(path / "rng.safetensors"))
        prefix = f"rank{info.rank}." if info.rank else ""  # rank 0's keys have no prefix (and no dot)
        mine = {k[len(prefix):]: v for k, v in rngs.items()
                if k.startswith(prefix) and "." not in k[len(prefix):]}
        if mine and (info.rank == 0 or saved_world == info.world_size):
            out["rng"] = mine
    return out


def load_optimizer(restored: dict, wrapped: nn.Module, optimizer, info: DistInfo) -> None:
    """Restore the optimizer state of a checkpoint written by any number of ranks, sharded
    or not, into this run's (possibly sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    path = restored.get("path")
    if path is not None and (path / SHARDED_DIR).is_dir():
        osd = get_optimizer_state_dict(wrapped, optimizer)
        _dcp_load({"optimizer": osd}, path / SHARDED_DIR, no_dist=info.world_size == 1)
        set_optimizer_state_dict(wrapped, optimizer, osd)
    elif "optimizer" in restored:
        if is_sharded(wrapped):
            full = _by_name(restored["optimizer"], wrapped, optimizer)
            set_optimizer_state_dict(wrapped, optimizer, full, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(restored["optimizer"])


def _by_name(osd: dict, model: nn.Module, optimizer) -> dict:
    """A ``optimizer.state_dict()`` (parameters numbered in param-group order) keyed by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups, i = [], 0
    for saved in osd["param_groups"]:
        groups.append({**saved, "params": order[i:i + len(saved["params"])]})
        i += len(saved["params"])
    return {"state": {order[int(k)]: v for k, v in osd["state"].items()}, "param_groups": groups}

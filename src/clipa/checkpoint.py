"""Checkpoints: the only code that knows what one is, how it is written and how it is read.
Tensors in safetensors, everything else in JSON; written atomically.

A run folder holds ``checkpoints/step_00000123/`` (:func:`step_dir`), each with ``state.json``
(a :class:`TrainState`: step, stage, the run and model configs, the data-loader positions, the
optimizer's hyper-parameters), ``checksums.json`` and either

- single-file (one process, or ddp: rank 0 writes): ``model.safetensors``,
  ``optimizer.safetensors`` and ``rng.safetensors``; or
- sharded (fsdp): ``sharded/``, every rank's shards of model and optimizer written with
  torch.distributed.checkpoint, plus ``rng.safetensors``. Its model is read whole in one
  process; ``consolidate`` adds ``model.safetensors`` beside the shards.

A step folder is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint behind. Each rank's RNG state and data-loader position are kept, so a
resume under the same number of processes continues every rank exactly. The
:class:`CheckpointManager` owns a run's ``checkpoints/`` folder: when to save, writing,
retention.

:func:`resolve` decides what a path names (torchtitan's ``_find_load_step``): a run folder,
its ``checkpoints/`` folder, a step folder or a bare weights file (OpenCLIP's, or an export).
Only safe formats are read: safetensors, JSON, and torch files with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .checksums import CHECKSUM_FILE, ChecksumError, verify_checksums, write_checksums
from .config import ConfigError, ModelConfig, RunConfig, from_dict, validate, validate_model
from .distributed import DistInfo, all_finite, is_sharded, max_over_ranks
from .files import save_tensors
from .models import CLIP, adapt_state_dict, load_strict
from .safe_load import dcp_load, read_dcp_metadata

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
SHARDED_DIR = "sharded"
TMP_PREFIX = ".tmp-"  # a folder being written; renamed into place when complete
_STEP_DIR = re.compile(r"^step_(\d+)$")
logger = logging.getLogger("clipa.checkpoint")


def step_name(step: int) -> str:
    """The folder name of global step ``step``: ``step_00000123``."""
    return f"step_{step:08d}"


def step_dir(root: str | Path, step: int) -> Path:
    """Where global step ``step``'s checkpoint goes in a ``checkpoints/`` folder."""
    return Path(root) / step_name(step)


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


class NonFiniteWeightsError(ValueError):
    """Weights holding NaN or infinity: never saved, and refused when loaded."""


def step_folders(root: str | Path) -> list[Path]:
    """The step folders under ``root``, newest first. A step folder appears whole (written under a
    temporary name and renamed), so one missing a file it must have was damaged since: it is
    listed, and ``verify`` names what is missing."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(steps, reverse=True)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete step folder with the highest step under ``root``, if any."""
    steps = step_folders(root)
    return steps[0] if steps else None


def resolve(path: str | Path) -> Found:
    """Name what ``path`` holds. In order: a weights file; a step folder (``step_N`` or holding
    ``state.json``); the latest step of a run folder's ``checkpoints/`` or of a ``checkpoints/``
    folder; a folder holding only ``model.safetensors``. Anything else is a FileNotFoundError
    naming it. What a step folder holds is checked by ``verify``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        return Found("weights", path)
    if (path / STATE_FILE).exists() or _STEP_DIR.match(path.name):
        return Found("sharded" if (path / SHARDED_DIR).is_dir() else "single", path)
    latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if latest is not None:
        return resolve(latest)
    if (path / MODEL_FILE).exists():
        return Found("weights", path / MODEL_FILE)
    raise FileNotFoundError(f"no clipa checkpoint in {path}: no {STATE_FILE}, no step_* folder, no {MODEL_FILE}")


# ----------------------------------------------------------------------------- checking


def verify(path: Path) -> bool:
    """Check a step folder: the files it must have (``state.json``, and ``model.safetensors`` or
    ``sharded/``) are there, every file its ``checksums.json`` lists matches, ``state.json``
    reads. A ChecksumError names the missing or damaged file. Returns True when checksums vouched
    for every file; False for a folder without ``checksums.json`` (written before clipa recorded
    them, or copied without it), which gets the cheap check alone (each safetensors file as long
    as its header says): its callers report it as unverified."""
    for name in (STATE_FILE,) if (path / SHARDED_DIR).is_dir() else (STATE_FILE, MODEL_FILE):
        if not (path / name).is_file():
            raise ChecksumError(f"{path / name}: missing (every checkpoint has it)")
    verified = verify_checksums(path)
    if not verified:
        for file in path.rglob("*.safetensors"):
            _check_length(file)
    try:
        json.loads((path / STATE_FILE).read_text())
    except ValueError as e:
        raise ChecksumError(f"{path / STATE_FILE}: unreadable ({e})") from None
    return verified


def _check_length(file: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes
    up to the largest end offset the header names: a truncated file is shorter."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 8 + n <= size else None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, AttributeError):
        header = None
    if header is None or size < 8 + n + end:
        raise ChecksumError(f"{file}: truncated or not a safetensors file ({size} bytes)")


def newest_intact(root: Path, log: Callable[[str], None]) -> tuple[tuple[Path, bool] | None, list[str]]:
    """The newest step folder under ``root`` that ``verify`` passes, with ``verify``'s answer
    (None: none does), and the damaged newer ones ("step_N: what is wrong"), each also
    skipped with a warning through ``log``."""
    damaged: list[str] = []
    for path in step_folders(root):
        try:
            return (path, verify(path)), damaged
        except ChecksumError as e:
            damaged.append(f"{path.name}: {e}")
            log(f"warning: skipping damaged checkpoint {damaged[-1]}")
    return None, damaged


def check_finite(sd: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """``sd`` itself, or a NonFiniteWeightsError naming ``source`` and the first bad tensor."""
    bad = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(f"{source} holds non-finite weights (NaN or infinity in {bad[0]}{more}); "
                                    "it cannot be evaluated, exported or resumed: use an earlier checkpoint")
    return sd


# ----------------------------------------------------------------------------- reading


# A safetensors header lists each tensor's name, dtype, shape and offsets (about 100 bytes): a
# bigG/14 model and its optimizer state need well under 1 MB. The format allows 100 MB, which
# takes minutes and gigabytes to parse; clipa refuses a header this large before reading it.
MAX_HEADER_BYTES = 16 * 2**20


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    """``safetensors`` ``load_file``, its failure a ChecksumError naming the file."""
    with open(file, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    if header > MAX_HEADER_BYTES:
        raise ChecksumError(f"{file}: a safetensors header of {header:,} bytes, more than the "
                            f"{MAX_HEADER_BYTES:,} any model needs; not read")
    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError and OS errors alike: the file is unusable
        if isinstance(e, FileNotFoundError):
            raise
        raise ChecksumError(f"{file}: unreadable ({e})") from None


def read_model(found: Found) -> dict[str, torch.Tensor]:
    """The model tensors of what ``open_checkpoint`` found (already checked), whole, on CPU. Torch
    files are read with ``weights_only=True``; a wrapper's ``state_dict`` key and DDP's
    ``module.`` prefix are taken off."""
    if found.kind == "sharded" and not (found.path / MODEL_FILE).exists():
        return check_finite(read_sharded_model(found.path / SHARDED_DIR), found.path)
    file = found.path if found.kind == "weights" else found.path / MODEL_FILE
    if file.suffix == ".safetensors":
        sd = _load_file(file)
    else:
        sd = _torch_load(file)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{file} does not hold a state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return check_finite(sd, file)


def open_checkpoint(path: str | Path, log: Callable[[str], None]) -> tuple[Found, bool]:
    """What ``path`` names, checked: a step folder verified (a damaged one named in a
    ChecksumError), or for a run or ``checkpoints/`` folder its newest intact step, each damaged
    newer one named through ``log``; with ``verify``'s answer (True for a bare weights file,
    which has no record to check). A step without checksums is reported through ``log``."""
    found = resolve(path)
    if not found.is_step:
        return found, True
    if _STEP_DIR.match(Path(path).name) or (Path(path) / STATE_FILE).exists():
        verified = verify(found.path)
    else:  # a folder of steps: its newest intact one, the damage named
        intact, _ = newest_intact(found.path.parent, log)
        if intact is None:
            raise ChecksumError(f"{path}: no intact checkpoint (each was named above)")
        found, verified = resolve(intact[0]), intact[1]
    if not verified:
        log(f"warning: {found.path} has no {CHECKSUM_FILE}: its files are unverified")
    return found, verified


def _torch_load(file: Path) -> Any:
    """A torch file read with ``weights_only=True``; one that needs code to load is refused in one
    line (torch's own message advises ``weights_only=False``, which would run it)."""
    import pickle

    from .safe_load import UnsafeCheckpointError

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"'{needs.group(1)}'" if needs else "code"
        raise UnsafeCheckpointError(f"{file}: refused: loading it would run {what}; clipa reads torch files only as "
                                    "plain tensors (weights_only=True). Convert it where it is trusted, e.g. to "
                                    "safetensors") from None


def read_weights(path: str | Path, log: Callable[[str], None] = logger.warning) -> dict[str, torch.Tensor]:
    """A model state dict from anything ``resolve`` accepts (a step folder checked first by
    ``open_checkpoint``; a sharded one read whole, in one process, on CPU)."""
    return read_model(open_checkpoint(path, log)[0])


def read_sharded_model(shards: str | Path) -> dict[str, torch.Tensor]:
    """The whole model state dict from a ``sharded/`` folder, in one process, on CPU."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_dcp_metadata(shards).state_dict_metadata
    sd = {
        k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }
    dcp_load({"model": sd}, shards, no_dist=True)
    return sd


def refuse_unpickling(weights_only: bool) -> None:
    """OpenCLIP's ``weights_only=False`` (unpickle the file): refused, naming how clipa reads weights."""
    if not weights_only:
        raise ValueError("weights_only=False: clipa never unpickles a file; weights are read as safetensors or "
                         "with torch.load(weights_only=True)")


def load_checkpoint(model: CLIP, checkpoint_path: str | Path, strict: bool = True, weights_only: bool = True):
    """Load the weights of anything ``resolve`` accepts into ``model`` and return the missing and
    unexpected keys, as OpenCLIP's ``load_checkpoint``: OpenCLIP or clipa layout; the weights'
    position tables are resized to the model's image grid and text length (OpenCLIP weights at
    another resolution). Nothing is unpickled, so ``weights_only=False`` is refused."""
    refuse_unpickling(weights_only)
    sd = adapt_state_dict(read_weights(checkpoint_path), model)
    if strict:
        return load_strict(model, sd, checkpoint_path)
    return model.load_state_dict(sd, strict=False)


# ----------------------------------------------------------------------------- the JSON part


@dataclass
class TrainState:
    """``state.json``: where a run stood when the checkpoint was written. Read from a file it is
    data, checked field by field (:meth:`from_json`); its configs pass the same checks as a
    recipe's before anything is built from them."""

    stage: int
    stage_step: int
    stage_done: bool
    global_step: int
    config: dict
    """The run config (``to_dict(RunConfig)``)."""
    model: dict | None = None
    """The model config as built (``to_dict(ModelConfig)``, its preprocessing included); None in
    checkpoints written before it was recorded."""
    loader: dict | None = None
    results: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    world_size: int = 1
    loader_ranks: list | None = None
    optimizer: dict | None = None
    """Single-file checkpoints: the optimizer's param groups and scalar state."""

    @classmethod
    def from_json(cls, data: Any, where: Path) -> TrainState:
        if not isinstance(data, dict):
            raise ChecksumError(f"{where}: not a checkpoint state (a {type(data).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        try:
            state = cls(**kept)
        except TypeError as e:  # a required key missing
            raise ChecksumError(f"{where}: not a checkpoint state ({e})") from None
        for name, kind in (("stage", int), ("stage_step", int), ("global_step", int), ("stage_done", bool),
                           ("config", dict), ("world_size", int), ("skipped_steps", int), ("results", list)):
            if not isinstance(getattr(state, name), kind):
                raise ChecksumError(f"{where}: {name} is {getattr(state, name)!r}, not a {kind.__name__}")
        return state

    def run_config(self, where: Path) -> RunConfig:
        """The saved run config, loaded strictly and validated (a ConfigError names the file)."""
        return _parsed(lambda: from_dict(RunConfig, self.config), validate, where, "config")

    def model_config(self, where: Path) -> ModelConfig | None:
        """The saved model config (None for checkpoints that did not record it)."""
        if self.model is None:
            return None
        return _parsed(lambda: from_dict(ModelConfig, self.model, prefix="model."), validate_model, where, "model")


def _parsed(build: Callable[[], Any], check: Callable[[Any], None], where: Path, what: str) -> Any:
    try:
        value = build()
        check(value)
    except ConfigError as e:
        raise ConfigError(f"{where} ({what}): {e}") from None
    return value


def read_state(path: Path) -> TrainState:
    """A step folder's ``state.json`` as a :class:`TrainState`."""
    file = path / STATE_FILE
    try:
        return TrainState.from_json(json.loads(file.read_text()), file)
    except ValueError as e:
        if isinstance(e, ChecksumError):
            raise
        raise ChecksumError(f"{file}: unreadable ({e})") from None


def read_run_config(found: Found) -> RunConfig | None:
    """The run config a step folder was trained with (None for a bare weights file)."""
    if not found.is_step:
        return None
    return read_state(found.path).run_config(found.path / STATE_FILE)


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


# ----------------------------------------------------------------------------- restoring


@dataclass
class Restored:
    """The tensors a resume needs from a verified step folder, for this rank."""

    model: dict[str, torch.Tensor]
    optimizer: dict | None  # single-file only; a sharded optimizer is read by ``load_optimizer``
    rng: dict[str, torch.Tensor] | None  # this rank's, when the checkpoint has them
    loader: dict | None  # this rank's loader position


def restore(path: Path, state: TrainState, info: DistInfo) -> Restored:
    """Read a step folder that was verified when it was located (nothing is hashed again):
    the whole model, the optimizer (single-file), and this rank's RNG states and loader
    position. A rank the checkpoint has no state for keeps its fresh seeds; loader positions
    carry over only under the same number of processes."""
    optimizer = None
    if (path / OPTIMIZER_FILE).exists():
        optimizer = _unflatten_optimizer(_load_file(path / OPTIMIZER_FILE), state.optimizer or {})
    loader = state.loader
    if state.world_size > 1 and state.world_size == info.world_size and state.loader_ranks:
        loader = state.loader_ranks[info.rank]
    rng = None
    if (path / RNG_FILE).exists():
        rngs = _load_file(path / RNG_FILE)
        prefix = f"rank{info.rank}." if info.rank else ""  # rank 0's keys have no prefix (and no dot)
        mine = {k[len(prefix):]: v for k, v in rngs.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        if mine and (info.rank == 0 or state.world_size == info.world_size):
            rng = mine
    kind = "sharded" if (path / SHARDED_DIR).is_dir() else "single"
    return Restored(read_model(Found(kind, path)), optimizer, rng, loader)


def load_optimizer(path: Path, restored: Restored, wrapped: nn.Module, optimizer, info: DistInfo) -> None:
    """Restore the optimizer state of a checkpoint written by any number of ranks, sharded
    or not, into this run's (possibly sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if (path / SHARDED_DIR).is_dir():
        osd = get_optimizer_state_dict(wrapped, optimizer)
        dcp_load({"optimizer": osd}, path / SHARDED_DIR, no_dist=info.world_size == 1)
        set_optimizer_state_dict(wrapped, optimizer, osd)
    elif restored.optimizer is not None:
        if is_sharded(wrapped):
            full = _by_name(restored.optimizer, wrapped, optimizer)
            set_optimizer_state_dict(wrapped, optimizer, full, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(restored.optimizer)


def _by_name(osd: dict, model: nn.Module, optimizer) -> dict:
    """A ``optimizer.state_dict()`` (parameters numbered in param-group order) keyed by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups, i = [], 0
    for saved in osd["param_groups"]:
        groups.append({**saved, "params": order[i:i + len(saved["params"])]})
        i += len(saved["params"])
    return {"state": {order[int(k)]: v for k, v in osd["state"].items()}, "param_groups": groups}


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
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta.get("param_groups", [])}


def _os_error(e: BaseException) -> OSError | None:
    """``e`` as the OSError it is or wraps (safetensors reports a full disk as its own error
    with "os error 28" in the text); None for anything else."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def _write_step(root: Path, step: int, model_sd: dict[str, torch.Tensor] | None, optimizer_sd: dict | None,
                state: dict, rng: dict[str, torch.Tensor],
                write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``root/step_{step}`` atomically, its checksums last, and return its path.
    ``write_extra(tmp)`` adds files before the rename (the fsdp shards, when ``model_sd`` is
    None). A failed write (a full disk) leaves nothing behind and is an OSError naming the step."""
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f"{TMP_PREFIX}{step_name(step)}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        if model_sd is not None:
            save_tensors({k: v.detach().contiguous().cpu() for k, v in model_sd.items()}, tmp / MODEL_FILE)
        if write_extra is not None:
            write_extra(tmp)
        state = dict(state)
        if optimizer_sd is not None:
            tensors, state["optimizer"] = _flatten_optimizer(optimizer_sd)
            save_tensors(tensors, tmp / OPTIMIZER_FILE)
        save_tensors({k: v.contiguous() for k, v in rng.items()}, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        write_checksums(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = _os_error(e)
        if error is None:
            raise
        raise OSError(error.errno, f"could not write checkpoint {final} ({error.strerror or error}); "
                                   "the checkpoints before it are intact") from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def consolidate(path: str | Path) -> Path:
    """Write ``model.safetensors`` into a sharded step folder, so that it loads anywhere as
    a single-file checkpoint (the optimizer stays sharded; resuming reads it under any
    number of processes). Returns the file; the folder's checksums then cover it too."""
    found = resolve(path)
    if found.kind != "sharded":
        raise FileNotFoundError(f"{found.path} has no {SHARDED_DIR}/ folder: not a sharded checkpoint")
    out = found.path / MODEL_FILE
    tmp = found.path / f".{MODEL_FILE}.tmp"
    save_tensors({k: v.contiguous() for k, v in read_weights(found.path).items()}, tmp)
    os.replace(tmp, out)
    write_checksums(found.path)
    return out


class CheckpointManager:
    """A run's ``checkpoints/`` folder: when to save (``train.checkpoint_every``, stage ends),
    the writing (single-file or sharded, a collective under torchrun) and retention
    (``train.keep_last``). The trainer hands it a :class:`TrainState` and the live objects."""

    def __init__(self, folder: str | Path, info: DistInfo, every: int = 0, keep_last: int | None = None):
        self.folder, self.info, self.every, self.keep_last = Path(folder), info, every, keep_last

    def should_save(self, stage_step: int, stage_steps: int) -> bool:
        """A periodic checkpoint after ``stage_step`` steps (the stage's end saves separately)."""
        return bool(self.every) and stage_step % self.every == 0 and stage_step < stage_steps

    def save(self, state: TrainState, wrapped: nn.Module, model: nn.Module, optimizer,
             rng: dict[str, torch.Tensor]) -> Path | None:
        """Write step ``state.global_step``; every rank's RNG states and loader positions are
        kept. Returns the step folder, or None, with nothing written, when the weights are not
        finite: no checkpoint ever holds NaN or infinite weights. A failed write raises on
        every rank."""
        if not bool(all_finite(list(wrapped.parameters()))):
            return None
        record = dataclasses.asdict(state)
        if self.info.world_size == 1:
            _write_step(self.folder, state.global_step, model.state_dict(), optimizer.state_dict(), record, rng)
        else:
            self._save_across_ranks(record, wrapped, model, optimizer, rng)
        if self.info.is_main and self.keep_last is not None:
            prune(self.folder, self.keep_last)
        return step_dir(self.folder, state.global_step)

    def _save_across_ranks(self, record: dict, wrapped: nn.Module, model: nn.Module, optimizer,
                           rng: dict[str, torch.Tensor]) -> None:
        import torch.distributed as dist

        info, step = self.info, record["global_step"]
        per_rank: list[Any] = [None] * info.world_size
        dist.all_gather_object(per_rank, {"rng": rng, "loader": record.get("loader")})
        record = {**record, "world_size": info.world_size, "loader_ranks": [p["loader"] for p in per_rank]}
        rngs = {f"rank{r}.{k}" if r else k: v for r, p in enumerate(per_rank) for k, v in p["rng"].items()}
        sharded = is_sharded(wrapped)
        shards = self.folder / f"{TMP_PREFIX}{SHARDED_DIR}-{step_name(step)}"
        if sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

            dcp.save({"model": get_model_state_dict(wrapped),
                      "optimizer": get_optimizer_state_dict(wrapped, optimizer)}, checkpoint_id=shards)
        error: OSError | None = None
        if info.is_main:
            try:
                _write_step(self.folder, step, None if sharded else model.state_dict(),
                            None if sharded else optimizer.state_dict(), record, rngs,
                            (lambda tmp: os.replace(shards, tmp / SHARDED_DIR)) if sharded else None)
            except OSError as e:
                error = e
        # doubles as the barrier: no rank goes on before the step folder is in place, and a
        # failed write stops every rank rather than leaving the others waiting
        if max_over_ranks(int(error is not None), info):
            raise error or OSError(f"rank 0 could not write checkpoint {step_dir(self.folder, step)}")


def remove_temporaries(root: str | Path) -> list[str]:
    """Delete the half-written folders of writers that died (``.tmp-*`` under ``root``) and
    return their names. Only safe while no other run writes here: the run folder's lock."""
    root = Path(root)
    stale = sorted(root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return [p.name for p in stale]


def prune(root: str | Path, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` step folders under ``root`` (``train.keep_last``);
    return the names deleted."""
    old = step_folders(root)[keep_last:]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in old]

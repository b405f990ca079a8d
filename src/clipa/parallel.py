"""Everything the training loop needs to know about processes: who am I, how is the
model wrapped, how are gradients synchronised, how is the loss shared, how are
checkpoints written and read.

A plain ``python`` run is one process and takes the trivial path of every function here.
Under ``torchrun`` (or ``srun torchrun``) each process trains on its share of the global
batch: ``train.parallel=ddp`` replicates the model and averages gradients,
``train.parallel=fsdp`` shards parameters, gradients and optimizer state with FSDP2
(``fully_shard`` per transformer block and at the root). The loss gathers every rank's
embeddings with gradient, so both compute the single-process global-batch gradient.
"""

from __future__ import annotations

import atexit
import functools
import os
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .bigbatch import temperature_params
from .config import TrainConfig
from .loss import clamp_logit_scale, clip_loss, sigmoid_loss, tiled_clip_loss
from .train import checkpoint as ckpt

# Rank 0 may evaluate (or write a checkpoint) while the other ranks wait in their next
# collective; NCCL's default 10-minute timeout is too short for a large zero-shot sweep.
_TIMEOUT = timedelta(hours=2)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU); a plain run is one process.

    ``device`` is ``train.device``: "auto" uses this node's GPU ``LOCAL_RANK`` if there is one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs on this node")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_TIMEOUT,
                                device_id=dev if cuda else None)
        atexit.register(_shutdown)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def local_batch_size(global_batch: int, info: DistInfo) -> int:
    """Each rank's share of ``stage.batch_size``, which is the global (contrastive) batch."""
    if global_batch % info.world_size:
        raise ValueError(f"stage.batch_size={global_batch} does not split evenly over {info.world_size} processes")
    return global_batch // info.world_size


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier(device_ids=[info.local_rank] if info.device.type == "cuda" else None)


# ----------------------------------------------------------------------------- wrapping


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_model(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """DDP or FSDP2 around ``model`` (which already sits on ``info.device``).

    Ranks seed their initialisation differently (rank-dependent masking needs it), so both
    start from rank 0's weights: DDP broadcasts them itself, FSDP after a broadcast here.
    """
    if info.world_size == 1:
        return model
    if is_sharded(model):
        raise RuntimeError("the model is already sharded: pass parallel.full_model(...) to wrap_model")
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    if cfg.parallel == "fsdp":
        return _fully_shard(model, cfg, info)
    raise ValueError(f"train.parallel={cfg.parallel!r}: choose ddp or fsdp")


def _fully_shard(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
    kwargs: dict[str, Any] = {"mesh": init_device_mesh(info.device.type, (info.world_size,))}
    root: dict[str, Any] = {}
    if cfg.fsdp_mixed_precision:  # bf16 compute and all-gathers, fp32 gradient reduction and embeddings
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        root["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                 output_dtype=torch.float32)
    if cfg.fsdp_cpu_offload:  # shards live in CPU memory and are copied to the GPU per use
        if info.device.type != "cuda":
            raise ValueError("train.fsdp_cpu_offload=true needs GPUs: on CPU the shards already are in CPU memory")
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for tower in (model.visual.transformer, model.transformer):
        for block in tower.resblocks:
            fully_shard(block, **kwargs)
    replicated = temperature_params(model)  # 0-d: FSDP2 shards along dim 0, so these stay replicated
    fully_shard(model, ignored_params=set(replicated), **{**kwargs, **root})
    for p in replicated:
        p.register_post_accumulate_grad_hook(_average_grad)
    return model


def _average_grad(p: torch.Tensor) -> None:
    """Average a replicated parameter's gradient over ranks after each accumulation. Doing
    it every time stays exact: the already-averaged part is equal on all ranks."""
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())


def full_model(wrapped: nn.Module, model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` itself, or under FSDP a plain unsharded copy on every rank (a collective).

    For evaluation on rank 0 and for the next stage, which changes the image and text
    position tables and so needs whole tensors; the copy has no token reduction (the trainer
    sets each stage's).
    """
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .models import CLIP

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True))
    with torch.device(info.device):
        plain = CLIP(model.cfg)
    ckpt.load_weights(plain, sd)
    return plain.train(model.training)


def no_sync_factory(wrapped: nn.Module, info: DistInfo) -> Callable[[], ContextManager]:
    """A context that skips gradient synchronisation (for all but the last microbatch)."""
    if info.world_size == 1:
        return nullcontext
    if is_sharded(wrapped):
        return functools.partial(_fsdp_no_sync, wrapped)
    return wrapped.no_sync


@contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(wrapped: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip by the global gradient norm; under FSDP the shards' squares are summed over ranks."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in wrapped.parameters() if p.grad is not None]
    shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
    if not shards:
        return torch.nn.utils.clip_grad_norm_(wrapped.parameters(), max_norm)
    plain = [g for g in grads if not isinstance(g, DTensor)]
    device = plain[0].device if plain else _comm_device()
    sq = torch.stack([g.float().square().sum().to(device) for g in shards]).sum()
    dist.all_reduce(sq)
    sq = sq + sum((g.float().square().sum() for g in plain), torch.zeros((), device=device))
    total = sq.sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in shards + plain:
        g.mul_(coef.to(g.device, g.dtype))
    return total


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------- loss across ranks


# torch 2.14 renamed these; the old names remain for torch >= 2.6
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows in rank order; the backward sums every rank's gradient for this
    rank's rows (each rank's loss depends on all rows) and keeps this rank's block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        _all_gather(out, x.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter(out, grad.contiguous())
        return out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x)


def _local_clip_loss(img, txt, all_img, all_txt, logit_scale, offset):
    scale = clamp_logit_scale(logit_scale).exp()
    labels = torch.arange(img.shape[0], device=img.device) + offset
    return (F.cross_entropy(scale * img @ all_txt.T, labels) + F.cross_entropy(scale * txt @ all_img.T, labels)) / 2


def _local_sigmoid_loss(img, txt, all_img, all_txt, logit_scale, logit_bias, offset):
    return sigmoid_loss(img, txt, logit_scale, logit_bias, all_txt=all_txt, offset=offset)


def loss_across_ranks(loss_fn: Callable[..., torch.Tensor], info: DistInfo) -> Callable[..., torch.Tensor]:
    """``loss_fn`` (``clip_loss``, ``tiled_clip_loss`` or ``sigmoid_loss``, or a partial of one)
    on the global batch when each rank holds ``B_local`` rows.

    Each rank gathers all embeddings with gradient and takes its own rows against every
    column, targets offset by ``rank * B_local``. Gradient averaging (DDP / FSDP) of these
    local losses gives exactly the global loss's gradient. The value returned is the global
    loss (the mean over ranks, added without gradient), so every rank logs the same number
    and agrees on skipping a non-finite step.
    """
    if info.world_size == 1:
        return loss_fn
    fn, kw = (loss_fn.func, loss_fn.keywords) if isinstance(loss_fn, functools.partial) else (loss_fn, {})
    if fn is clip_loss:
        local = _local_clip_loss
    elif fn is tiled_clip_loss:
        def local(img, txt, all_img, all_txt, t, offset):
            return tiled_clip_loss(img, txt, t, all_img=all_img, all_txt=all_txt, offset=offset, **kw)
    elif fn is sigmoid_loss:
        local = _local_sigmoid_loss
    else:
        raise ValueError(f"no cross-rank form of the loss {loss_fn!r}")

    def across(img: torch.Tensor, txt: torch.Tensor, *temps: torch.Tensor) -> torch.Tensor:
        loss = local(img, txt, gather_with_grad(img), gather_with_grad(txt), *temps, offset=info.rank * img.shape[0])
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        return loss + (mean / info.world_size - loss.detach())

    return across


# ----------------------------------------------------------------------------- checkpoints
#
# Single process and ddp: rank 0 writes the usual safetensors checkpoint. fsdp: every rank
# writes its shards of the model and optimizer with torch.distributed.checkpoint into
# ``sharded/`` and rank 0 adds state.json; ``checkpoint.load_model`` and ``read_checkpoint``
# read the sharded model whole, and ``consolidate`` turns it into ``model.safetensors``.
# Either way each rank's RNG state and data-loader position are kept, so a resume under
# the same number of processes continues every rank exactly.


def save_checkpoint(root: Path, step: int, wrapped: nn.Module, model: nn.Module, optimizer,
                    state: dict, rng: dict, info: DistInfo) -> None:
    if info.world_size == 1:
        ckpt.save_checkpoint(root, step, model.state_dict(), optimizer.state_dict(), state, rng)
        return
    per_rank: list[Any] = [None] * info.world_size
    dist.all_gather_object(per_rank, {"rng": rng, "loader": state.get("loader")})
    state = {**state, "world_size": info.world_size, "loader_ranks": [p["loader"] for p in per_rank]}
    rngs = {f"rank{r}.{k}" if r else k: v for r, p in enumerate(per_rank) for k, v in p["rng"].items()}
    if not is_sharded(wrapped):
        if info.is_main:
            ckpt.save_checkpoint(root, step, model.state_dict(), optimizer.state_dict(), state, rngs)
        _barrier(info)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    shards = Path(root) / f".tmp-{ckpt.SHARDED_DIR}-step_{step:08d}"
    dcp.save({"model": get_model_state_dict(wrapped), "optimizer": get_optimizer_state_dict(wrapped, optimizer)},
             checkpoint_id=shards)
    if info.is_main:
        ckpt.save_checkpoint(root, step, None, None, state, rngs,
                             write_extra=lambda tmp: os.replace(shards, tmp / ckpt.SHARDED_DIR))
    _barrier(info)


def read_checkpoint(path: str | Path, info: DistInfo) -> dict[str, Any]:
    """``checkpoint.read_checkpoint`` with this rank's own RNG state and loader position
    (those of rank 0 when the checkpoint was written by one process; a rank the
    checkpoint has no state for keeps its fresh seeds)."""
    out = ckpt.read_checkpoint(path)
    out["path"] = Path(path)
    st = out["state"]
    saved_world = st.get("world_size", 1)
    if saved_world > 1 and saved_world == info.world_size:
        st["loader"] = st["loader_ranks"][info.rank]
    if "rng" in out:
        prefix = f"rank{info.rank}." if info.rank else ""  # rank 0's keys have no prefix (and no dot)
        mine = {k[len(prefix):]: v for k, v in out["rng"].items()
                if k.startswith(prefix) and "." not in k[len(prefix):]}
        if mine and (info.rank == 0 or saved_world == info.world_size):
            out["rng"] = mine
        else:
            del out["rng"]
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
    if path is not None and (path / ckpt.SHARDED_DIR).is_dir():
        osd = get_optimizer_state_dict(wrapped, optimizer)
        _dcp_load({"optimizer": osd}, path / ckpt.SHARDED_DIR, no_dist=info.world_size == 1)
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
    """Write ``model.safetensors`` into a sharded (fsdp) checkpoint folder, so that it loads
    anywhere as a single-process checkpoint (the optimizer stays sharded; resuming reads it
    under any number of processes). Returns the file."""
    from safetensors.torch import save_file

    path = Path(path)
    if not (path / ckpt.SHARDED_DIR).is_dir():
        raise FileNotFoundError(f"{path} has no {ckpt.SHARDED_DIR}/ folder: not a sharded checkpoint")
    out = path / "model.safetensors"
    tmp = path / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in read_sharded_model(path / ckpt.SHARDED_DIR).items()}, str(tmp))
    os.replace(tmp, out)
    return out

"""Everything the training loop needs to know about processes: who am I, on which device,
how is the model wrapped, how are gradients synchronised.

A plain ``python`` run is one process and takes the trivial path of every function here.
Under ``torchrun`` (or ``srun torchrun``) each process trains on its share of the global
batch: ``train.parallel=ddp`` replicates the model and averages gradients,
``train.parallel=fsdp`` shards parameters, gradients and optimizer state with FSDP2
(``fully_shard`` per transformer block and at the root). The loss across ranks lives in
``loss.global_loss``; checkpoints of either kind in ``checkpoint``.
"""

from __future__ import annotations

import atexit
import functools
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import TrainConfig
from .models import CLIP, load_weights

# Rank 0 may evaluate (or write a checkpoint) while the other ranks wait in their next
# collective; NCCL's default 10-minute timeout is too short for a large zero-shot sweep.
_TIMEOUT = timedelta(hours=2)


@dataclass
class DistInfo:
    """This process's place in the run; the defaults are a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``train.device`` / ``--device`` as a device: "auto" is the GPU when there is one;
    asking for CUDA without one is an error before any work starts."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but no CUDA device is available")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU); a plain run is one process
    on ``resolve_device(device)``. Under torchrun each process takes this node's GPU
    ``LOCAL_RANK`` (when the device resolves to CUDA).
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = dev.type == "cuda"
    if cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs on this node")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=_TIMEOUT,
                                device_id=dev if cuda else None)
        atexit.register(shutdown)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def local_batch_size(global_batch: int, info: DistInfo) -> int:
    """Each rank's share of ``stage.batch_size``, which is the global (contrastive) batch."""
    if global_batch % info.world_size:
        raise ValueError(f"stage.batch_size={global_batch} does not split evenly over {info.world_size} processes")
    return global_batch // info.world_size


def shutdown() -> None:
    """Leave the process group (registered at exit; tests call it between runs)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in one process)."""
    if info.world_size > 1:
        dist.barrier(device_ids=[info.local_rank] if info.device.type == "cuda" else None)


# ----------------------------------------------------------------------------- wrapping


def temperature_params(model: nn.Module) -> list[nn.Parameter]:
    """The loss's own parameters after the embeddings: ``logit_scale`` (and ``logit_bias``)."""
    bias = getattr(model, "logit_bias", None)
    return [model.logit_scale] + ([bias] if bias is not None else [])


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
        raise RuntimeError("the model is already sharded: pass distributed.full_model(...) to wrap_model")
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    if cfg.parallel == "fsdp":
        return _fully_shard(model, cfg, info)
    raise ValueError(f"train.parallel={cfg.parallel!r}: choose ddp or fsdp")


def _fully_shard(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """FSDP2 per transformer block and at the root (torch >= 2.7: ``ignored_params``).

    Resharding: with ``train.fsdp_reshard_after_forward=false`` (the default) a block's
    gathered parameters stay from its forward to its backward, and ``no_sync_factory`` also
    keeps them across the microbatches of a re-materialised step: each block is all-gathered
    once per optimizer step. Resharding after every use instead gathers each block three
    times per microbatch (no-grad embedding pass, re-materialised forward, backward), for the
    memory of one unsharded copy of the parameters less (bf16 with mixed precision).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
    kwargs: dict[str, Any] = {"mesh": init_device_mesh(info.device.type, (info.world_size,)),
                              "reshard_after_forward": cfg.fsdp_reshard_after_forward}
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


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard(model: nn.Module) -> None:
    """Free every gathered FSDP parameter (after a forward that had no backward, such as an
    evaluation through the sharded model); a no-op for an unsharded model."""
    if is_sharded(model):
        for m in _fsdp_modules(model):
            m.reshard()


def full_model(wrapped: nn.Module, model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` itself, or under FSDP a plain unsharded copy on every rank (a collective).

    For the next stage, which changes the image and text position tables and so needs whole
    tensors on every rank; the copy has no token reduction (the trainer sets each stage's).
    Evaluation takes ``evaluation_model`` instead, which builds the copy on rank 0 only.
    """
    if not is_sharded(model):
        return model
    return _plain_copy(wrapped, model, info, main_only=False)


def evaluation_model(wrapped: nn.Module, model: nn.Module, info: DistInfo) -> nn.Module | None:
    """The model rank 0 evaluates (None on the other ranks; a collective under FSDP).

    Unsharded, that is ``model`` itself. Under FSDP the whole weights are gathered tensor by
    tensor into rank 0's CPU memory and only rank 0 builds a model from them: one extra copy
    of the model in the job, not one per rank.
    """
    if not is_sharded(model):
        return model if info.is_main else None
    return _plain_copy(wrapped, model, info, main_only=True)


def _plain_copy(wrapped: nn.Module, model: nn.Module, info: DistInfo, main_only: bool) -> nn.Module | None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full_state_dict with cpu_offload gives rank 0 the tensors and the other ranks nothing
    options = StateDictOptions(full_state_dict=True, cpu_offload=main_only)
    sd = get_model_state_dict(wrapped, options=options)
    if main_only and not info.is_main:
        return None
    with torch.device(info.device):
        plain = CLIP(model.cfg)
    load_weights(plain, sd)
    return plain.train(model.training)


def no_sync_factory(wrapped: nn.Module, info: DistInfo, keep_gathered: bool = True) -> Callable[[], ContextManager]:
    """A context that skips gradient synchronisation (for all but the last microbatch).
    Under FSDP with ``keep_gathered`` (``not train.fsdp_reshard_after_forward``) it also keeps
    the gathered parameters after the backward, for the next microbatch."""
    if info.world_size == 1:
        return nullcontext
    if is_sharded(wrapped):
        return functools.partial(_fsdp_no_sync, wrapped, keep_gathered)
    return wrapped.no_sync


@contextmanager
def _fsdp_no_sync(model: nn.Module, keep_gathered: bool) -> Iterator[None]:
    """No gradient reduce-scatter and, with ``keep_gathered``, no resharding after this
    backward either: the next microbatch's forward and backward reuse the gathered
    parameters (FSDP2's gradient-accumulation pattern)."""
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(not keep_gathered)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


def grad_norm(wrapped: nn.Module) -> torch.Tensor:
    """The global gradient norm, as a tensor on the device (nothing waits for it); under
    FSDP the shards' squares are summed over ranks."""
    from torch.distributed.tensor import DTensor
    from torch.nn.utils import get_total_norm

    grads = [p.grad for p in wrapped.parameters() if p.grad is not None]
    shards = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    if not shards:
        return get_total_norm(plain)
    device = plain[0].device if plain else _comm_device()
    sq = get_total_norm(shards).to(device).square()
    dist.all_reduce(sq)
    if plain:
        sq = sq + get_total_norm(plain).square()
    return sq.sqrt()


def clip_grad_norm(wrapped: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most ``max_norm`` (as
    ``torch.nn.utils.clip_grad_norm_``); returns the norm before clipping, on the device."""
    from torch.distributed.tensor import DTensor

    total = grad_norm(wrapped)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in wrapped.parameters():
        if p.grad is not None:
            g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            g.mul_(coef.to(g.device, g.dtype))
    return total


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether every entry of ``tensors`` is finite, as a 0-d bool tensor on their device;
    under FSDP each rank checks its shards and the answer is agreed over ranks."""
    from torch.distributed.tensor import DTensor
    from torch.nn.utils import get_total_norm

    sharded = any(isinstance(t, DTensor) for t in tensors)
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    bad = (~torch.isfinite(get_total_norm(local, norm_type=float("inf")))).float()  # max |x|: NaN and inf stay
    if sharded:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad == 0


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

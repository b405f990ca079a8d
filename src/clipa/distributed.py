"""Processes: who am I and on which device, the collectives ranks agree through, gradient
synchronisation and norms, and whole models gathered from shards.

A plain ``python`` run is one process and takes the trivial path of every function here.
Under ``torchrun`` (or ``srun torchrun``) each process trains on its share of the global
batch; how the model is wrapped (DDP or FSDP2) is ``models.parallelize``, the loss across
ranks ``loss.global_loss``, checkpoints of either kind ``checkpoint``.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from .models import CLIP, load_weights
from .runtime import resolve_device

# A CPU (gloo) group beside the training one: for the small decisions every rank must take
# together between steps (stop on a signal, agree on an error) and for barriers that can name
# a rank that never arrives, without a GPU synchronisation. Under gloo it is the world group.
_control: dist.ProcessGroup | None = None
# A second CPU group used for nothing but a roll call after a collective has failed: the groups
# the failure happened in may be left broken, this one is not, so it can name who is missing.
_roll_call: dist.ProcessGroup | None = None
_timeout = timedelta(minutes=30)  # train.timeout_minutes, once init_distributed has run
ROLL_CALL_S = 60.0  # the longest a roll call waits: live ranks fail the same collective within moments


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


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU); a plain run is one process
    on ``resolve_device(device)``. Under torchrun each process takes this node's GPU
    ``LOCAL_RANK`` (when the device resolves to CUDA). A collective (or the rendezvous) that
    waits ``timeout_minutes`` for another rank fails instead of hanging (``train.timeout_minutes``).
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
        global _control, _roll_call, _timeout
        timeout = _timeout = timedelta(minutes=timeout_minutes)
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout, device_id=dev if cuda else None,
                                    store=_attempt_store(world, timeout), rank=rank, world_size=world)
            _control = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD
            _roll_call = dist.new_group(backend="gloo", timeout=timeout)
        except dist.DistError as e:  # a rank that never joined: one line, not the store's traceback
            raise StalledRankError(f"rank {rank} waited in vain for the other {world - 1} rank(s) to join "
                                   f"(a rank stalled or died; train.timeout_minutes sets the wait): "
                                   f"{' '.join(str(e).split())[:300]}") from None
        atexit.register(shutdown, clean=False)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _attempt_store(world: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun's static rendezvous (``--master-port``, one TCPStore kept by the agent
    across restarts) a restarted worker would read the previous attempt's peer addresses,
    still in the store, and wait forever connecting to dead processes (gloo's full mesh;
    seen as restarts hanging in ``init_process_group``). So each restart attempt gets keys of
    its own. Elsewhere (a plain env:// launch) None: torch's default store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"clipa/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)


def shutdown(clean: bool = True) -> None:
    """Leave the process group: at the end of a run (``clean``), once every rank has arrived
    here. A rank that tears its group down while a peer still talks to it makes gloo abort
    that peer at exit ("terminate called without an active exception"). After an error (the
    handler registered at exit) nobody waits: the others may never arrive."""
    global _control, _roll_call
    if dist.is_initialized():
        if clean:
            _monitored_barrier("the end of the run")
        dist.destroy_process_group()
    _control = _roll_call = None


class StalledRankError(RuntimeError):
    """A rank did not arrive within ``train.timeout_minutes``: it stalled or died."""


def barrier(info: DistInfo, what: str = "a checkpoint") -> None:
    """Wait for every rank (a no-op in one process); after ``train.timeout_minutes`` fail
    with an error naming the ranks that did not arrive and ``what`` they were waited on for."""
    if info.world_size > 1:
        _monitored_barrier(what)


def _monitored_barrier(what: str, group: dist.ProcessGroup | None = None, timeout: timedelta | None = None) -> None:
    try:
        # the timeout given explicitly: left out, torch uses its default (30 minutes), not the group's
        dist.monitored_barrier(group=group or _control, timeout=timeout or _timeout, wait_all_ranks=True)
    except RuntimeError as e:
        raise _stalled(what, e) from None


def _stalled(what: str, e: BaseException) -> StalledRankError:
    """The one error of a stall: who waited, where, and which ranks did not arrive (gloo names
    them: "Ranks 1, 3 failed to pass monitoredBarrier in 1800000 ms")."""
    named = re.search(r"Ranks? ([\d, ]+) failed to pass", str(e))
    missing = f"rank(s) {named.group(1)} did not arrive" if named else " ".join(str(e).split())[:300]
    return StalledRankError(f"rank {dist.get_rank()} waited in vain for the others in {what} (a rank stalled or "
                            f"died; train.timeout_minutes sets the wait): {missing}")


def _is_communication_error(error: BaseException) -> bool:
    """A failed collective: torch's own type, or the RuntimeError gloo and NCCL raise (gloo's
    timeout reads "[.../gloo/transport/tcp/...] Timed out waiting 30000ms for send operation")."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and bool(re.search(r"gloo|NCCL|Timed out|Connection (reset|closed)",
                                                             str(error)))


def collective_failure(error: BaseException, what: str) -> BaseException:
    """What to raise when a collective of ``what`` failed on this rank (a timeout, or a peer
    that died): after a roll call on a group of its own, the error naming the ranks that did not
    arrive; ``error`` itself when every rank answered (the failure was something else)."""
    if not (dist.is_initialized() and _is_communication_error(error)):
        return error
    try:
        wait = min(_timeout, timedelta(seconds=ROLL_CALL_S))
        dist.monitored_barrier(group=_roll_call, timeout=wait, wait_all_ranks=True)
    except RuntimeError as e:
        return _stalled(what, e)
    return error


def from_main(fn: Callable[[], Any], info: DistInfo) -> Any:
    """``fn()`` run on rank 0 alone, its result on every rank; if it raises, every rank raises
    that error (rather than the others waiting for rank 0 until the timeout). For decisions
    about the shared run folder that one process takes for all."""
    if info.world_size == 1:
        return fn()
    box: list[Any] = [None]
    if info.is_main:
        try:
            box = [(True, fn())]
        except Exception as e:
            box = [(False, e)]
    dist.broadcast_object_list(box, src=0, group=_control)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def max_over_ranks(value: int, info: DistInfo) -> int:
    """The largest ``value`` any rank holds (itself in one process): how ranks agree between
    steps, e.g. on stopping for a signal that reached some of them first. A CPU collective."""
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return int(t.item())


# ----------------------------------------------------------------------------- sharded models


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


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

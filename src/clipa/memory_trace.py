"""Trace one real training step without running it: fake tensors, counted at the dispatcher.

``trace_step(setup)`` builds the model, wraps it (FSDP2 over a fake process group of
``setup.world_size`` simulated ranks, this process being rank 0), builds the fused AdamW
and runs ``train.step.TrainStep`` twice on a fake batch, all under ``FakeTensorMode``:
every operator runs its shape function and no memory is allocated, so ViT-bigG-14 at its
recipe's per-rank batch traces on a laptop in seconds. ``LiveBytes`` counts the bytes of
every tensor storage alive at each operator and keeps the peak; that peak is what
``torch.cuda.max_memory_allocated`` would report for the same kernels (less the caching
allocator's rounding to 512-byte blocks).

Torchtitan's ``scripts/estimate/estimation.py`` does the same with
``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``; that tracker (and its parent
``MemTracker``) refuses a root module called twice in one step, which the BASIC step does
once per microbatch, so ``LiveBytes`` keeps only what a peak needs: storages seen at the
dispatcher, storages FSDP2 resizes (how it frees and re-allocates gathered parameters),
and DTensors seen through their local shards.

What a trace cannot show: the kernels are the CPU ones (CPU flash attention, which like
the GPU's keeps only the output and a log-sum-exp per query; CPU autocast, which unlike
CUDA's leaves layer norms in bf16), and DDP's reducer cannot run on fake tensors: DDP is
traced as the same step with its gradients kept allocated between steps (its buckets,
``gradient_as_bucket_view``), which is all DDP adds to a rank's memory.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import distributed
from .config import DEFAULT_LR, ImageReductionConfig, OptimConfig, TrainConfig
from .loss import clip_loss, global_loss, sigmoid_loss, tiled_clip_loss
from .memory import StepSetup
from .models import CLIP
from .models.parallelize import parallelize
from .train.optim import build_optimizer
from .train.step import TrainStep


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storage alive, and their peak, as operators run in its context.

    A storage is counted once, from the first operator that returns it (or ``track``) until
    it is freed (a weak reference's callback), at its size, which ``UntypedStorage.resize_``
    may change (FSDP2 frees and re-allocates gathered parameters that way).
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.peak = 0
        self._bytes: dict[int, int] = {}  # id of a storage's Python object -> bytes counted
        self._refs: dict[int, weakref.ref] = {}

    def track(self, *objs: Any) -> None:
        """Count tensors made outside the context (parameters, optimizer state, the batch)."""
        for t in tree_flatten(objs)[0]:
            if isinstance(t, torch.Tensor):
                for storage in get_untyped_storages(t):
                    self._count(storage)

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = id(storage), storage.nbytes()
        if key not in self._refs:
            self._refs[key] = weakref.ref(storage, lambda _, k=key: self._free(k))
        self.now += size - self._bytes.get(key, 0)
        self._bytes[key] = size
        self.peak = max(self.peak, self.now)

    def _free(self, key: int) -> None:
        self.now -= self._bytes.pop(key)
        del self._refs[key]

    def __enter__(self) -> LiveBytes:
        # DTensor's sharding propagation runs operators under a fake mode of its own: those
        # allocate nothing, only the operators under the mode active here do
        self._fake_mode = active_fake_mode()
        self._resize = torch.UntypedStorage.resize_

        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            out = self._resize(storage, size)
            self._count(storage)
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *args: Any) -> None:
        torch.UntypedStorage.resize_ = self._resize
        super().__exit__(*args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor run its local operators, which come back here
        if func is torch.ops._c10d_functional.wait_tensor.default and active_fake_mode():
            out = args[0]  # the fake kernel returns a new tensor; eager waits in place
        else:
            out = func(*args, **(kwargs or {}))
        if active_fake_mode() is self._fake_mode:
            self.track(out)
        return out


@contextlib.contextmanager
def fake_ranks(world_size: int) -> Iterator[None]:
    """This process as rank 0 of ``world_size`` simulated ranks: collectives return at once
    with outputs of the right shape (torch's "fake" backend); a no-op for one rank."""
    if world_size == 1:
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised: trace in a process of its own")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _real_device_mesh() -> Iterator[None]:
    """``init_device_mesh`` outside fake mode: a mesh reads its rank layout as Python ints,
    which a fake tensor cannot give (torchtitan builds its mesh before faking for this)."""
    from torch.distributed import device_mesh

    original = device_mesh.init_device_mesh

    def init_device_mesh(*args: Any, **kwargs: Any):
        with unset_fake_temporarily():
            return original(*args, **kwargs)

    device_mesh.init_device_mesh = init_device_mesh
    try:
        yield
    finally:
        device_mesh.init_device_mesh = original


def _loss_fn(setup: StepSetup, rank: int) -> Callable:
    """The trainer's loss for ``setup`` (``Trainer._loss_fn``), across its ranks."""
    if setup.loss == "siglip":
        fn = sigmoid_loss
    else:
        fn = tiled_clip_loss if setup.tiled_loss else clip_loss
    return global_loss(fn, rank, setup.world_size)


def _model(setup: StepSetup) -> CLIP:
    """The model as the trainer sets it up for the stage: its image size, text length and a
    token reduction that keeps ``seen_patches``."""
    cfg = setup.model
    if setup.loss == "siglip" and cfg.init_logit_bias is None:
        raise ValueError("a siglip step needs a model with a logit bias (model_overrides.init_logit_bias)")
    model = CLIP(cfg).train()
    model.set_grad_checkpointing(setup.grad_checkpointing)
    if setup.image_size != model.visual.image_size:
        model.visual.set_image_size(setup.image_size)
    if setup.text_length != model.context_length:
        model.set_context_length(setup.text_length)
    grid = setup.image_size // cfg.vision.patch_size
    if setup.seen_patches < grid * grid:
        model.visual.set_token_reduction(ImageReductionConfig(strategy="random", keep=setup.seen_patches))
    return model


@dataclass
class Step:
    """A ready training step of ``setup`` and its batch: ``step(images, text)``."""

    step: TrainStep
    images: torch.Tensor
    text: torch.Tensor
    state: list[torch.Tensor]  # what the step keeps between steps: parameters, AdamW state, gradients


def build_step(setup: StepSetup, rank: int = 0, fake_ddp: bool = False) -> Step:
    """The trainer's step for ``setup`` on ``rank`` (a process group of ``setup.world_size``
    must exist when it is above 1): the model at the stage's sizes, wrapped by
    ``models.parallelize``, the fused AdamW of ``train.optim`` with its state already
    made (a zero-gradient update), the trainer's loss, and a random batch of the stage's
    shapes in the compute dtype. So the next call is a steady step, as in a long run.

    ``fake_ddp``: DDP's reducer cannot run on fake tensors, so the step runs unwrapped and
    keeps its gradients allocated between steps, which is what DDP's buckets do
    (``gradient_as_bucket_view``); its no_sync only delays the all-reduce."""
    if setup.device != "cpu":
        raise ValueError("this machine runs CPU kernels: build a setup with device='cpu'")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setup.precision]
    train = TrainConfig(parallel=setup.parallel, fsdp_mixed_precision=setup.fsdp_mixed_precision,
                        fsdp_reshard_after_forward=setup.fsdp_reshard_after_forward)
    info = distributed.DistInfo(rank=rank, world_size=setup.world_size)
    model = _model(setup)
    wrapped = model if fake_ddp else parallelize(model, train, torch.device("cpu"), setup.world_size, dtype=dtype)
    optimizer = build_optimizer(wrapped, OptimConfig(), DEFAULT_LR)
    keep_grads = fake_ddp and setup.world_size > 1
    if keep_grads:
        optimizer.zero_grad = lambda set_to_none=True: type(optimizer).zero_grad(optimizer, set_to_none=False)
    for p in wrapped.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    no_sync = None if fake_ddp else distributed.no_sync_factory(wrapped, info, not setup.fsdp_reshard_after_forward)
    step = TrainStep(wrapped, model.logit_scale, optimizer, _loss_fn(setup, rank), device=torch.device("cpu"),
                     dtype=dtype, microbatch_size=setup.microbatch, grad_clip=1.0, no_sync=no_sync)
    b, size = setup.local_batch, setup.image_size
    images = torch.randn(b, 3, size, size, dtype=dtype or torch.float32)
    text = torch.randint(0, setup.model.text.vocab_size, (b, setup.text_length))
    state = list(wrapped.parameters()) + list(wrapped.buffers()) + [
        t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    state += [p.grad for p in wrapped.parameters() if p.grad is not None]
    return Step(step, images, text, state)


def trace_step(setup: StepSetup) -> int:
    """Peak bytes of rank 0 in a steady training step of ``setup``, traced under fake
    tensors (FSDP2 over ``setup.world_size`` simulated ranks). ``build_step``'s zero-gradient
    update also fills DTensor's sharding-propagation cache, whose misses would build fake
    arguments at the parameters' global shapes, which a real step never allocates."""
    with fake_ranks(setup.world_size), _real_device_mesh(), FakeTensorMode():
        built = build_step(setup, fake_ddp=setup.parallel == "ddp")
        tracker = LiveBytes()
        tracker.track(built.state, built.images, built.text)
        with tracker:
            built.step(built.images, built.text)
        return tracker.peak

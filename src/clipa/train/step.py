"""One optimizer step, the same code for the trainer and the benchmarks.

A step is: the forward passes under autocast (bf16 or fp16), the loss in fp32 and the
backward outside it (``bigbatch.forward_backward``, plain or re-materialised), the gradient
norm and clipping, AdamW, and the temperature clamp. Nothing in a step waits for the
device: the loss and a non-finite flag stay device tensors. A step whose loss or gradient
norm is not finite is skipped by the fused AdamW kernel itself (its ``found_inf`` input, the
protocol ``GradScaler`` uses: no update and no step count) and counted on the device.
``read()`` brings the numbers to the host, one synchronisation, at logging time.

A finite gradient gives AdamW a finite update (Adam's m / sqrt(v) is bounded by a constant
of its betas), so skipping on the gradient norm is what keeps the weights finite; ``read``
also checks the weights themselves, on the device.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn as nn

from .. import distributed
from ..bigbatch import forward_backward
from ..data.transforms import normalise
from ..loss import MAX_LOGIT_SCALE, LossFn


@dataclass
class StepStats:
    """What ``TrainStep.read`` brings to the host."""

    loss: float
    """The last step's loss (global across ranks)."""
    skipped: int
    """Steps skipped for a non-finite loss or gradient since the start."""
    consecutive: int
    """The longest run of consecutive skipped steps that went on after the previous read,
    counted from its start (0 when every step since then trained)."""
    weights_finite: bool
    """Whether every parameter is finite now."""


class TrainStep:
    """``step(images, text)`` runs one optimizer step and returns its loss as a device tensor.

    ``wrapped`` is the model as trained (maybe DDP/FSDP), ``temperature`` its ``logit_scale``
    parameter t, kept in [0, ln 100] (clamped here and after each step: the losses take
    ``exp(t)`` as it is, so this is the cap at 100), ``optimizer`` a fused AdamW
    (``train.optim.build_optimizer``). ``device`` and ``dtype`` are the runtime's
    (``clipa.runtime.Runtime``; dtype None: fp32); fp16 adds a gradient scaler. ``no_sync`` and ``generators`` are passed to
    ``forward_backward`` (microbatches).
    """

    def __init__(
        self,
        wrapped: nn.Module,
        temperature: nn.Parameter,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        *,
        device: torch.device,
        dtype: torch.dtype | None = None,
        microbatch_size: int | None = None,
        grad_clip: float | None = None,
        no_sync: Callable[[], ContextManager] | None = None,
        generators: Sequence[torch.Generator] = (),
    ):
        if not optimizer.defaults.get("fused"):
            raise ValueError("TrainStep skips non-finite steps on the device: it needs a fused optimizer "
                             "(torch.optim.AdamW(..., fused=True), as train.optim.build_optimizer makes)")
        self.wrapped, self.temperature, self.optimizer, self.loss_fn = wrapped, temperature, optimizer, loss_fn
        self.device, self.microbatch_size, self.grad_clip = device, microbatch_size, grad_clip
        self.no_sync, self.generators = no_sync, generators
        self._clamp_temperature()  # a model loaded beyond the cap starts on it
        self.dtype = dtype
        self.autocast: Callable[[], ContextManager] = (
            nullcontext if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))
        )
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.params = [p for p in wrapped.parameters() if p.requires_grad]
        self._param_device = self.params[0].device  # the optimizer's (CPU under FSDP CPU offload)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self._skipped, self._run, self._worst = zero.clone(), zero.clone(), zero.clone()
        self._loss = torch.full((), float("nan"), device=device)

    def to_device(self, batch: dict, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where a loader batch arrives on the device: (images, text). Copies are non-blocking
        (the loaders pin their batches); the uint8 images (a quarter of float32's bytes) are
        normalised with the model's ``mean`` and ``std`` and cast to the compute dtype here."""
        images = batch["images"].to(self.device, non_blocking=True)
        return (normalise(images, mean, std, self.dtype or torch.float32),
                batch["text"].to(self.device, non_blocking=True))

    def __call__(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(
            self.wrapped, images, text, self.loss_fn, microbatch_size=self.microbatch_size,
            no_sync=self.no_sync, generators=self.generators, autocast=self.autocast, scaler=self.scaler,
        )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the norm, clipping and AdamW see true gradients
        if self.grad_clip:
            norm = distributed.clip_grad_norm(self.wrapped, self.grad_clip)
        else:
            norm = distributed.grad_norm(self.wrapped)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))  # equal on every rank: both are global
        # fused AdamW leaves parameters, moments and step count alone where found_inf is 1
        self.optimizer.found_inf = bad.to(self._param_device, torch.float32)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        if self.scaler is not None:
            self.scaler.update()  # halves the scale after an overflow, grows it after a quiet stretch
        self._clamp_temperature()
        self._count(bad)
        self._loss = loss
        return loss

    @torch.no_grad()
    def _clamp_temperature(self) -> None:
        self.temperature.clamp_(0, MAX_LOGIT_SCALE)

    def _count(self, bad: torch.Tensor) -> None:
        b = bad.to(self.device, torch.int64)
        self._skipped.add_(b)
        self._run.add_(1).mul_(b)  # consecutive skipped steps, 0 after a good one
        torch.maximum(self._worst, self._run, out=self._worst)

    def read(self) -> StepStats:
        """The host's view of the steps so far: one synchronisation (every rank calls it at
        the same steps; under FSDP the weights check is agreed over ranks)."""
        finite = distributed.all_finite(self.params).to(self.device)
        loss, skipped, worst, finite = torch.stack(
            [self._loss.detach().float().to(self.device), self._skipped.float(), self._worst.float(), finite.float()]
        ).tolist()
        self._worst.zero_()  # a run still going on keeps counting from its start (self._run)
        return StepStats(loss=loss, skipped=int(skipped), consecutive=int(worst), weights_finite=finite == 1.0)

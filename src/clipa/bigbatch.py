"""The BASIC / GradCache step: a contrastive batch far larger than activation memory allows,
with gradients equal to full-batch training (docs/reference.md#gradcache).

The loss couples every pair in the batch, but it only depends on the parameters through the
embeddings. So: embed each microbatch without a graph (saving its RNG state), compute the
loss once on the whole batch of detached embeddings to get d(loss)/d(embedding) and the
gradient of the logit scale (and bias), then re-run each microbatch with a graph (same RNG state, so random
masking and dropout replay identically) and back-propagate ``sum(embedding * cached_grad)``.
Activation memory is that of one microbatch; compute is one extra forward pass.

OpenCLIP's ``--accum-freq`` instead recomputes the whole loss once per microbatch, which
adds the temperature's full gradient K times (tests/test_bigbatch.py shows it).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn as nn

from .loss import LossFn


def _rng_state(device: torch.device, generators: Sequence[torch.Generator]) -> dict:
    """Every random source a forward pass may draw from: torch's CPU and CUDA generators and
    the caller's own (the vision tower's masking generator)."""
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generators": [g.get_state() for g in generators],
    }


def _set_rng_state(device: torch.device, generators: Sequence[torch.Generator], state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)


def forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    loss_fn: LossFn,
    microbatch_size: int | None = None,
    no_sync: Callable[[], ContextManager] | None = None,
    generators: Sequence[torch.Generator] = (),
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimizer step's forward and backward: fills ``.grad`` of every parameter and
    returns the loss, detached, on the device (reading it is the caller's choice: it waits
    for the device). The step is ``loss_fn(*model(images, tokens))``: the model returns
    OpenCLIP's tuple (normalised embeddings, ``logit_scale.exp()`` and the bias where the
    model has one), and ``loss_fn`` is ``clip_loss``, ``tiled_clip_loss``, ``sigmoid_loss``
    or their ``global_loss`` form.
    ``model`` may be a DDP/FSDP wrapper.

    With ``microbatch_size`` smaller than the batch, the step is re-materialised per
    microbatch (see the module docstring). ``no_sync`` is a context factory (DDP's
    ``model.no_sync``) entered around the backward of all but the last microbatch, so
    gradients are reduced once; the temperature's gradient is added in that last backward.
    ``generators`` are the random sources besides torch's own that the forward draws from
    (the generator given to ``set_token_reduction``): each microbatch's re-run replays them.

    Only the forward passes run under ``autocast`` (a context factory, e.g. bf16): the losses
    work in fp32 and the backward follows the forward's dtypes. With fp16, ``scaler`` scales
    what is back-propagated (its ``unscale_`` and ``update`` are the caller's).
    """
    batch = images.shape[0]
    scale = scaler.scale if scaler is not None else (lambda x: x)
    if microbatch_size is None or microbatch_size >= batch:
        with autocast():
            out = model(images, tokens)
        loss = loss_fn(*out)
        scale(loss).backward()
        return loss.detach()

    chunks = list(zip(images.split(microbatch_size), tokens.split(microbatch_size)))
    states, imgs, txts = [], [], []
    with torch.no_grad(), autocast():
        for x, t in chunks:
            states.append(_rng_state(x.device, generators))
            img, txt, *temps = model(x, t)  # every microbatch returns the same scale (and bias)
            imgs.append(img)
            txts.append(txt)

    img = torch.cat(imgs).requires_grad_()
    txt = torch.cat(txts).requires_grad_()
    temps = [p.detach().requires_grad_() for p in temps]
    loss = loss_fn(img, txt, *temps)
    grads = torch.autograd.grad(loss, [img, txt, *temps])
    img_grads, txt_grads = grads[0].split(microbatch_size), grads[1].split(microbatch_size)
    del img, txt, imgs, txts

    last = len(chunks) - 1
    for i, ((x, t), state) in enumerate(zip(chunks, states)):
        _set_rng_state(x.device, generators, state)
        with no_sync() if (no_sync is not None and i < last) else contextlib.nullcontext():
            with autocast():
                img, txt, *temps = model(x, t)
            surrogate = (img * img_grads[i]).sum() + (txt * txt_grads[i]).sum()
            if i == last:  # shared by all microbatches: its whole gradient, once
                surrogate = surrogate + sum((p * g).sum() for p, g in zip(temps, grads[2:]))
            scale(surrogate).backward()
    return loss.detach()

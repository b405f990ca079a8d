"""Every loss under bf16 autocast against plain fp64 PyTorch.

Reference: the same loss in fp64 with autocast off. Tolerance: the loss and each gradient
(image and text embeddings, the log-temperature) within 1e-3 of the reference relative to
its largest entry, at logit scale 100 (t just under ln 100), where a bf16 logit is off by
up to 0.4. The cross-rank forms are the local losses of simulated ranks (each rank's rows
against the gathered columns), averaged as the optimizer sees them.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from clipa.loss import MAX_LOGIT_SCALE, clip_loss, sigmoid_loss, tiled_clip_loss

SCALE_100 = MAX_LOGIT_SCALE - 1e-4
WORLD, B_LOCAL, DIM = 4, 16, 32
TILED = functools.partial(tiled_clip_loss, tile=24)
SIGMOID = functools.partial(sigmoid_loss, logit_bias=torch.tensor(-10.0))


def across_ranks(loss_fn):
    """The mean over WORLD simulated ranks of each rank's local loss on the global batch."""

    def mean(img, txt, scale):
        return sum(
            loss_fn(img[r * B_LOCAL:(r + 1) * B_LOCAL], txt[r * B_LOCAL:(r + 1) * B_LOCAL], scale,
                    all_img=img, all_txt=txt, offset=r * B_LOCAL)
            for r in range(WORLD)
        ) / WORLD

    return mean


LOSSES = {
    "naive": clip_loss,
    "tiled": TILED,
    "sigmoid": SIGMOID,
    "cross-rank naive": across_ranks(clip_loss),
    "cross-rank tiled": across_ranks(TILED),
    "cross-rank sigmoid": across_ranks(SIGMOID),
}


def value_and_grads(fn, img, txt, t: float, autocast: bool):
    img, txt = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    t = torch.tensor(t, dtype=img.dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(img, txt, t.exp())  # the scale, as the model's forward returns it
    loss.backward()
    return [loss.detach(), img.grad, txt.grad, t.grad]


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_under_bf16_autocast_matches_fp64(name):
    fn = LOSSES[name]
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(WORLD * B_LOCAL, DIM, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(WORLD * B_LOCAL, DIM, generator=g, dtype=torch.float64), dim=-1)
    t = SCALE_100 if "sigmoid" not in name else math.log(10.0)
    ref = value_and_grads(fn, img, txt, t, autocast=False)
    got = value_and_grads(fn, img.float(), txt.float(), t, autocast=True)
    assert got[0].dtype == torch.float32
    for what, a, b in zip(["loss", "d img", "d txt", "d t"], got, ref):
        err = (a.double() - b).abs().max().item()
        assert err <= 1e-3 * b.abs().max().item(), f"{name} {what}: error {err:.3g}, |ref| {b.abs().max():.3g}"


@pytest.mark.parametrize("name", ["naive", "tiled", "sigmoid"])
def test_bf16_embeddings_are_promoted_and_keep_their_gradient_dtype(name):
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(8, DIM, generator=g), dim=-1).bfloat16().requires_grad_()
    txt = F.normalize(torch.randn(8, DIM, generator=g), dim=-1).bfloat16().requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](img, txt, scale)
    loss.backward()
    assert loss.dtype == torch.float32 and img.grad.dtype == torch.bfloat16
    ref = LOSSES[name](img.detach().float(), txt.detach().float(), scale.detach())
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=0)

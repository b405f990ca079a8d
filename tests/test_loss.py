"""Contrastive losses against independent references.

- naive ``clip_loss`` / ``sigmoid_loss`` vs OpenCLIP v3.3.0 ``ClipLoss`` / ``SigLipLoss``:
  value and gradients within 1e-6.
- ``tiled_clip_loss`` vs ``clip_loss``: value and gradients (embeddings and temperature)
  within 1e-5 relative. Ill-conditioned inputs (scale 100, near-identical rows) are
  compared in fp64, because there the fp32 naive loss itself is only ~1e-4 from exact.

Every loss takes the scale ``exp(t)`` that the model's forward returns; the gradients are
taken with respect to the log-temperature t, the parameter, through that exp.
"""

import functools
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from clipa.loss import MAX_LOGIT_SCALE, clip_loss, sigmoid_loss, tiled_clip_loss, tiled_cross_entropy

open_clip_loss = pytest.importorskip("open_clip.loss")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
SCALE_100 = MAX_LOGIT_SCALE - 1e-4  # t just under the cap the trainer keeps


def embeddings(b: int, d: int = 16, dtype=torch.float32, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    return img.to(device), txt.to(device)


def value_and_grads(fn, img, txt, t):
    """The loss of ``fn(img, txt, exp(t))`` and its gradients w.r.t. img, txt and the log-temperature t."""
    img, txt = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    t = torch.tensor(float(t), dtype=img.dtype, device=img.device, requires_grad=True)
    loss = fn(img, txt, t.exp())
    loss.backward()
    return [loss.detach(), img.grad, txt.grad, t.grad]


def assert_rel_close(got, ref, rtol):
    """Each tensor within rtol of the reference, relative to the reference's largest entry."""
    for name, a, b in zip(["loss", "d img", "d txt", "d t"], got, ref):
        err = (a - b).abs().max().item()
        assert err <= rtol * b.abs().max().item(), f"{name}: error {err:.3g}, |ref| {b.abs().max():.3g}"


def openclip(img, txt, scale):
    return open_clip_loss.ClipLoss()(img, txt, scale)


@pytest.mark.parametrize("t", [math.log(1 / 0.07), 0.0, SCALE_100])
def test_clip_loss_matches_openclip(t):
    img, txt = embeddings(32)
    ours, ref = value_and_grads(clip_loss, img, txt, t), value_and_grads(openclip, img, txt, t)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [clip_loss, tiled_clip_loss], ids=["naive", "tiled"])
def test_temperature_clamped_to_the_cap_keeps_its_gradient(loss_fn):
    """The trainer clamps the fp32 parameter to MAX_LOGIT_SCALE after each step; there the
    loss must still pass a gradient, or the temperature could never leave the cap."""
    img, txt = embeddings(32)
    t = torch.tensor(5.0, requires_grad=True)
    with torch.no_grad():
        t.clamp_(0, MAX_LOGIT_SCALE)
    loss_fn(img, txt, t.exp()).backward()
    assert t.grad != 0


def test_sigmoid_loss_matches_openclip():
    img, txt = embeddings(32)
    bias = torch.tensor(-10.0)
    ours = value_and_grads(lambda i, x, s: sigmoid_loss(i, x, s, bias), img, txt, math.log(10.0))
    ref = value_and_grads(lambda i, x, s: open_clip_loss.SigLipLoss()(i, x, s, bias), img, txt, math.log(10.0))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,tile", [(64, None), (64, 64), (64, 1), (50, 7), (50, 200)])
def test_tiled_matches_naive_fp32(device, b, tile):
    img, txt = embeddings(b, device=device)
    for t in (math.log(1 / 0.07), SCALE_100):
        got = value_and_grads(lambda i, x, s: tiled_clip_loss(i, x, s, tile=tile), img, txt, t)
        assert_rel_close(got, value_and_grads(clip_loss, img, txt, t), 1e-5)


def near_identical(b: int, d: int, noise: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that differ only by ``noise``, with ten exact duplicates among the images."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, d, generator=g, dtype=dtype)
    img = F.normalize(base + noise * torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(base + noise * torch.randn(b, d, generator=g, dtype=dtype), dim=-1)
    img[10:20] = img[0]
    return img, txt


@pytest.mark.parametrize("noise", [1e-3, 1e-2, 1e-1])
def test_tiled_matches_naive_at_scale_100_with_near_identical_rows(noise):
    img, txt = near_identical(48, 16, noise, torch.float64)
    ref = value_and_grads(clip_loss, img, txt, SCALE_100)
    for tile in (5, 16, None):
        assert_rel_close(value_and_grads(lambda i, x, s: tiled_clip_loss(i, x, s, tile=tile), img, txt, SCALE_100), ref, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_tiled_is_stable_at_scale_100_with_identical_rows(device):
    """All logits equal 100: the loss is exactly log B and every gradient vanishes. Without
    the running maximum exp(100) overflows fp32 (Inf-CL's CPU path)."""
    row = F.normalize(torch.randn(1, 16), dim=-1)
    img = row.expand(64, 16).contiguous().to(device)
    got = value_and_grads(lambda i, x, s: tiled_clip_loss(i, x, s, tile=7), img, img, math.log(100.0))
    ref = value_and_grads(clip_loss, img, img, math.log(100.0))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[0].cpu(), torch.tensor(math.log(64.0)), rtol=1e-5, atol=0)
    for g in got[1:3]:
        assert g.abs().max() < 1e-5
    assert got[3].abs() < 1e-3  # exactly 0 in exact arithmetic; fp32 leaves ~100 * B * eps


def test_tiled_is_stable_with_logits_far_beyond_exp_range():
    """Unnormalised embeddings: logits in the thousands, where exp() of any of them is inf.
    fp32 must stay finite and right; gradients are compared in fp64 (see the module doc)."""
    g = torch.Generator().manual_seed(0)
    img, txt = 3 * torch.randn(40, 16, generator=g, dtype=torch.float64), 3 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    tiled = lambda i, x, s: tiled_clip_loss(i, x, s, tile=9)  # noqa: E731
    ref = value_and_grads(clip_loss, img, txt, SCALE_100)
    got32 = value_and_grads(tiled, img.float(), txt.float(), SCALE_100)
    assert all(torch.isfinite(x).all() for x in got32) and got32[0] > 500
    torch.testing.assert_close(got32[0].double(), ref[0], rtol=1e-6, atol=0)
    assert_rel_close(value_and_grads(tiled, img, txt, SCALE_100), ref, 1e-5)


def test_no_cap_in_the_loss_as_openclip():
    """At scale 300, beyond the cap the trainer keeps the parameter under, both losses are
    OpenCLIP's ``ClipLoss`` (the temperature keeps its gradient): the cap is the parameter's."""
    img, txt = embeddings(32)
    ref = value_and_grads(openclip, img, txt, math.log(300.0))
    assert ref[3] != 0
    assert_rel_close(value_and_grads(clip_loss, img, txt, math.log(300.0)), ref, 1e-5)
    assert_rel_close(value_and_grads(lambda i, x, s: tiled_clip_loss(i, x, s, tile=5), img, txt, math.log(300.0)),
                     ref, 1e-5)


def test_tiled_gradcheck_fp64():
    img, txt = embeddings(9, 4, torch.float64)
    q = img.requires_grad_()
    k = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(3.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, s: tiled_cross_entropy(q, k, s, offset=3, tile=4), (q, k, s))
    assert torch.autograd.gradcheck(lambda q, k, s: tiled_clip_loss(q, k, s, tile=4), (q, txt.requires_grad_(), s))


@pytest.mark.parametrize("loss_fn", [clip_loss, functools.partial(tiled_clip_loss, tile=5)], ids=["naive", "tiled"])
def test_cross_rank_local_losses_average_to_the_global_loss(loss_fn):
    """Each simulated rank takes its local rows against the gathered global columns with
    targets offset by rank * B_local (OpenCLIP's local loss with gather-with-grad); the mean
    over ranks is the global loss, with the same gradients."""
    world, b_local = 4, 12
    img, txt = embeddings(world * b_local, dtype=torch.float64)

    def local(all_img, all_txt, s, r):
        rows = slice(r * b_local, (r + 1) * b_local)
        return loss_fn(all_img[rows], all_txt[rows], s, all_img=all_img, all_txt=all_txt, offset=r * b_local)

    def openclip_local(all_img, all_txt, s, r):  # ClipLoss.get_logits with local_loss=True
        rows = slice(r * b_local, (r + 1) * b_local)
        labels = open_clip_loss.ClipLoss(local_loss=True, rank=r, world_size=world).get_ground_truth("cpu", b_local)
        return (F.cross_entropy(s * all_img[rows] @ all_txt.T, labels)
                + F.cross_entropy(s * all_txt[rows] @ all_img.T, labels)) / 2

    for r in range(world):
        got = value_and_grads(lambda i, x, s: local(i, x, s, r), img, txt, 2.0)
        assert_rel_close(got, value_and_grads(lambda i, x, s: openclip_local(i, x, s, r), img, txt, 2.0), 1e-5)
    mean = value_and_grads(lambda i, x, s: sum(local(i, x, s, r) for r in range(world)) / world, img, txt, 2.0)
    assert_rel_close(mean, value_and_grads(clip_loss, img, txt, 2.0), 1e-5)


def test_cross_rank_sigmoid_losses_average_to_the_global_loss():
    """SigLIP across ranks: each rank's image rows against all texts (``all_img`` unused);
    the mean over ranks is the whole-batch loss, with the same gradients (fp64, 1e-10)."""
    world, b_local = 3, 5
    img, txt = embeddings(world * b_local, dtype=torch.float64)
    bias = torch.tensor(-10.0, dtype=torch.float64)

    def local(all_img, all_txt, s, r):
        rows = slice(r * b_local, (r + 1) * b_local)
        return sigmoid_loss(all_img[rows], all_txt[rows], s, bias, all_img=all_img, all_txt=all_txt,
                            offset=r * b_local)

    mean = value_and_grads(lambda i, x, s: sum(local(i, x, s, r) for r in range(world)) / world, img, txt, 2.3)
    ref = value_and_grads(lambda i, x, s: sigmoid_loss(i, x, s, bias), img, txt, 2.3)
    assert_rel_close(mean, ref, 1e-10)
    with pytest.raises(ValueError, match="bias"):
        sigmoid_loss(img, txt, torch.tensor(10.0))


def test_one_signature_and_the_bias_is_ignored_by_infonce():
    """The three losses take ``(img, txt, logit_scale, logit_bias=None, *, all_img, all_txt,
    offset)``, so ``loss_fn(*model(images, text))`` works for each; the softmax losses ignore
    the bias."""
    names = ["img", "txt", "logit_scale", "logit_bias", "all_img", "all_txt", "offset"]
    for fn in (clip_loss, tiled_clip_loss, sigmoid_loss):
        assert list(inspect.signature(fn).parameters)[:7] == names, fn.__name__
    img, txt = embeddings(6)
    s, b = torch.tensor(7.0), torch.tensor(-10.0)
    for fn in (clip_loss, tiled_clip_loss):
        assert fn(img, txt, s, b) == fn(img, txt, s)
    with pytest.raises(ValueError, match="both all_img and all_txt"):
        clip_loss(img, txt, s, all_txt=txt)


def test_tiled_promotes_bf16_and_returns_bf16_gradients():
    img, txt = embeddings(32)
    img, txt = img.bfloat16().requires_grad_(), txt.bfloat16().requires_grad_()
    s = torch.tensor(7.0, requires_grad=True)
    loss = tiled_clip_loss(img, txt, s, tile=8)
    loss.backward()
    assert loss.dtype == torch.float32 and img.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, clip_loss(img.float(), txt.float(), s), rtol=1e-5, atol=0)

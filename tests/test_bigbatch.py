"""The re-materialised big-batch step against plain full-batch PyTorch (docs/reference.md#gradcache).

Tolerance: each parameter's gradient within 1e-5 of the reference relative to that
gradient's largest entry (fp32; a per-element relative test is meaningless for entries
that are rounding noise around zero).
"""

import contextlib
import math

import pytest
import torch

import clipa
from clipa.bigbatch import forward_backward
from clipa.config import ImageReductionConfig
from clipa.loss import clip_loss, sigmoid_loss, tiled_clip_loss

B, K = 16, 4
MB = B // K
MASKING = torch.Generator()  # the vision tower's masking generator, replayed by forward_backward


def small_model(**overrides) -> clipa.CLIP:
    torch.manual_seed(0)
    model = clipa.create_model(
        "clipa-tiny",
        embed_dim=16,
        vision={"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16},
        text={"context_length": 8, "width": 32, "heads": 2, "layers": 2, "vocab_size": 100},
        **overrides,
    )
    model.visual.set_token_reduction(ImageReductionConfig(strategy="random", ratio=0.5), MASKING)
    return model.train()


def batch(n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(1, 100, (n, 8), generator=g)


def grads_of(model, step) -> tuple[float, dict[str, torch.Tensor]]:
    """Run ``step(model)`` from zero gradients and a fixed masking seed."""
    model.zero_grad(set_to_none=True)
    MASKING.manual_seed(0)
    torch.manual_seed(123)
    loss = step(model)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, ref: dict, rtol: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        err = (got[name] - r).abs().max().item()
        assert err <= rtol * r.abs().max().item(), f"{name}: max error {err:.3g} vs max |grad| {r.abs().max():.3g}"


def step(loss_fn=clip_loss, microbatch_size=None, generators=(MASKING,), **kw):
    images, tokens = batch()
    # the loss stays on the device: read it here
    return lambda m: float(forward_backward(m, images, tokens, loss_fn, microbatch_size, generators=generators, **kw))


@pytest.mark.parametrize("loss_fn", [clip_loss, tiled_clip_loss], ids=["naive", "tiled"])
def test_microbatched_step_equals_full_batch_with_random_masking(loss_fn):
    model = small_model()
    ref_loss, ref = grads_of(model, step(loss_fn))
    loss, got = grads_of(model, step(loss_fn, MB))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert got.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert_grads_close(got, ref)


def test_masking_is_live_so_the_comparison_is_sensitive():
    """A different masking draw changes the gradients far beyond the tolerance."""
    model = small_model()
    _, ref = grads_of(model, step())
    model.zero_grad(set_to_none=True)
    MASKING.manual_seed(1)
    images, tokens = batch()
    forward_backward(model, images, tokens, clip_loss)
    with pytest.raises(AssertionError):
        assert_grads_close({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, ref)


def test_masking_generator_is_replayed_only_when_passed():
    """Re-run microbatches draw fresh masks unless the step is given the tower's generator."""
    model = small_model()
    _, ref = grads_of(model, step())
    _, got = grads_of(model, step(microbatch_size=MB, generators=()))
    with pytest.raises(AssertionError):
        assert_grads_close(got, ref)


def test_uneven_microbatches_and_sigmoid_loss_with_bias():
    model = small_model(init_logit_scale=2.3, init_logit_bias=-10.0)
    scale, b = model(*batch(2))[2:]  # the forward hands the loss exp(t) and the bias (a copy, for FSDP2)
    assert (scale.item(), b.item()) == pytest.approx((math.exp(2.3), -10.0)) and b.grad_fn is not None
    _, ref = grads_of(model, step(sigmoid_loss))
    _, got = grads_of(model, step(sigmoid_loss, 5))  # 16 = 5 + 5 + 5 + 1
    assert ref["logit_bias"].abs() > 0
    assert_grads_close(got, ref)


def test_naive_accumulation_gets_temperature_gradient_k_times():
    """OpenCLIP --accum-freq: cache all embeddings, then per microbatch recompute it with a
    graph, splice it into the cached batch and back-propagate the *whole* loss. Embedding
    paths come out right, but each of the K losses adds d(loss)/dt in full."""
    model = small_model()
    _, ref = grads_of(model, step())
    images, tokens = batch()

    def accum_freq(m):
        chunks = list(zip(images.split(MB), tokens.split(MB)))
        states, cache = [], []
        with torch.no_grad():
            for x, t in chunks:
                states.append((torch.get_rng_state(), MASKING.get_state()))
                cache.append(m(x, t)[:2])
        for j, (x, t) in enumerate(chunks):
            torch.set_rng_state(states[j][0])
            MASKING.set_state(states[j][1])
            img_j, txt_j, *_ = m(x, t)
            img = torch.cat([c[0] for c in cache[:j]] + [img_j] + [c[0] for c in cache[j + 1:]])
            txt = torch.cat([c[1] for c in cache[:j]] + [txt_j] + [c[1] for c in cache[j + 1:]])
            clip_loss(img, txt, m.logit_scale.exp()).backward()

    _, got = grads_of(model, accum_freq)
    assert ref["logit_scale"].abs() > 1e-3
    torch.testing.assert_close(got["logit_scale"], K * ref["logit_scale"], rtol=1e-5, atol=0)
    assert_grads_close({n: g for n, g in got.items() if n != "logit_scale"},
                       {n: g for n, g in ref.items() if n != "logit_scale"})


def saved_bytes(model, fn) -> int:
    """Bytes that autograd saves for backward during ``fn(model)``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(model)
    return total


@pytest.mark.parametrize("microbatch_size", [None, MB], ids=["plain", "microbatched"])
def test_gradient_checkpointing_gives_the_same_gradients(microbatch_size):
    model = small_model()
    _, ref = grads_of(model, step())
    plain_saved = saved_bytes(model, step())
    model.set_grad_checkpointing(True)
    _, got = grads_of(model, step(microbatch_size=microbatch_size))
    assert saved_bytes(model, step()) < plain_saved / 2  # the blocks' activations are not kept
    assert_grads_close(got, ref)


def test_no_sync_wraps_all_but_the_last_microbatch():
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(True)
        yield

    model = small_model()
    _, ref = grads_of(model, step())
    _, got = grads_of(model, step(microbatch_size=MB, no_sync=no_sync))
    assert len(entered) == K - 1
    assert_grads_close(got, ref)

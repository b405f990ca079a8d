"""What only a GPU can show (skipped without CUDA; benchmarks/gpu_check.sh runs them).

- The training step never synchronises with the host outside logging:
  ``torch.cuda.set_sync_debug_mode("error")`` raises on any synchronising call.
- bf16 is what "auto" picks on a GPU that has it; fp16 with its scaler trains.
- A checkpoint written on the GPU resumes on the CPU, and one written on the CPU resumes on
  the GPU (weights, optimizer, masking generator, data position).
- The compiled towers give the eager towers' embeddings (bf16 tolerance: 2e-2 relative).
"""

from __future__ import annotations

import pytest
import torch

import clipa
from clipa import checkpoint as ckpt
from clipa.config import ImageReductionConfig, OptimConfig
from clipa.loss import clip_loss, tiled_clip_loss
from clipa.models.parallelize import apply_compile
from clipa.runtime import autocast_dtype
from clipa.train.optim import build_optimizer
from clipa.train.step import TrainStep
from clipa.train.trainer import Trainer

from test_train import _params, tiny_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def model_on_gpu(strategy: str = "random") -> clipa.CLIP:
    torch.manual_seed(0)
    model = clipa.create_model("clipa-tiny").to(CUDA).train()
    generator = torch.Generator(device=CUDA).manual_seed(0)
    model.visual.set_token_reduction(ImageReductionConfig(strategy=strategy, ratio=0.5), generator)
    return model


def batch(n: int = 64):
    g = torch.Generator(device=CUDA).manual_seed(1)
    return torch.randn(n, 3, 32, 32, device=CUDA, generator=g), torch.randint(1, 49407, (n, 16), device=CUDA, generator=g)


@pytest.mark.parametrize("loss_fn,microbatch", [(clip_loss, None), (tiled_clip_loss, 16)], ids=["plain", "microbatched"])
def test_steps_do_not_synchronise(loss_fn, microbatch):
    model = model_on_gpu()
    optimizer = build_optimizer(model, OptimConfig(), 1e-3)
    step = TrainStep(model, model.logit_scale, optimizer, loss_fn, device=CUDA, dtype=autocast_dtype("auto", CUDA),
                     microbatch_size=microbatch, grad_clip=1.0,
                     generators=(model.visual.token_reduction.generator,))
    images, text = batch()
    step(images, text)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(images, text)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stats = step.read()
    assert stats.skipped == 0 and stats.weights_finite and stats.loss == stats.loss


def test_auto_is_bf16_on_this_gpu_and_fp16_trains():
    assert autocast_dtype("auto", CUDA) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    model = model_on_gpu("none")
    optimizer = build_optimizer(model, OptimConfig(), 1e-3)
    step = TrainStep(model, model.logit_scale, optimizer, clip_loss, device=CUDA, dtype=torch.float16, grad_clip=1.0)
    images, text = batch()
    for _ in range(8):
        step(images, text)
    stats = step.read()
    assert stats.skipped < 8 and stats.weights_finite


@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoints_move_between_gpu_and_cpu(tmp_path, first, then):
    args = ["stage.samples=128", "stage.batch_size=32", "stage.warmup=1", "train.checkpoint_every=2",
            "stage.image_reduction.strategy=random", "stage.image_reduction.ratio=0.5"]
    written = Trainer(tiny_cfg(tmp_path / "a", *args, f"train.device={first}"))
    written.fit()
    step2 = tmp_path / "a" / "checkpoints" / "step_00000002"
    assert f"generator_{first}" in ckpt.restore(step2, ckpt.read_state(step2), written.dist).rng
    resumed = Trainer(tiny_cfg(tmp_path / "b", *args, f"train.device={then}", f"train.resume={step2}"))
    resumed.fit()
    a, b = _params(written.model), _params(resumed.model)
    assert a.keys() == b.keys() and all(torch.isfinite(v).all() for v in b.values())


def test_compiled_towers_match_eager():
    model = model_on_gpu("none")
    images, text = batch(16)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(images, text)
        apply_compile(model, per_block=False)
        compiled = model(images, text)
    for a, b in zip(eager[:2], compiled[:2]):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * a.float().abs().max()

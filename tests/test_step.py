"""The one training step (train/step.py) against plain PyTorch, and its promise not to wait
for the device.

Reference: the step written out by hand (forward, clip_loss, backward, gradient clipping,
fused AdamW, temperature clamp) on an identical model: parameters within 1e-6 relative to
each tensor's largest entry after 3 steps (fp32; the same kernels in the same order).
"No synchronisation" is checked by counting the Tensor methods that move a value to the
host (``item``, ``__bool__``, ``__float__``, ``__int__``, ``tolist``) during steps.
"""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import clipa
from clipa.config import ImageReductionConfig, OptimConfig
from clipa.loss import MAX_LOGIT_SCALE, clip_loss, sigmoid_loss, tiled_clip_loss
from clipa.runtime import autocast_dtype
from clipa.train.optim import build_optimizer
from clipa.train.step import TrainStep

from test_distributed import tiny_model

ROOT = Path(__file__).resolve().parents[1]

B = 8
LOSSES = {"clip": clip_loss, "tiled": tiled_clip_loss, "siglip": sigmoid_loss}


def small_model(loss: str = "clip") -> clipa.CLIP:
    torch.manual_seed(0)
    return tiny_model(loss)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, 16, 16, generator=g), torch.randint(1, 100, (B, 8), generator=g)


def make_step(model, loss="clip", dtype=None, microbatch=None, clip=0.5, generators=()) -> TrainStep:
    optimizer = build_optimizer(model, OptimConfig(), 1e-3)
    return TrainStep(model, model.logit_scale, optimizer, LOSSES[loss], device=torch.device("cpu"),
                     dtype=dtype, microbatch_size=microbatch, grad_clip=clip, generators=generators)


class HostReads:
    """Counts the calls that bring a tensor's value to the host."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))

    def _counted(self, name, original):
        def call(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return call


def test_matches_the_step_written_out_by_hand():
    model, ref = small_model(), small_model()
    images, text = batch()
    step = make_step(model)
    optimizer = build_optimizer(ref, OptimConfig(), 1e-3)  # the same fused AdamW
    for _ in range(3):
        loss = step(images, text)
        optimizer.zero_grad(set_to_none=True)
        ref_loss = clip_loss(*ref(images, text))
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        optimizer.step()
        with torch.no_grad():
            ref.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=0)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max(), name


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("microbatch", [None, 4], ids=["plain", "microbatched"])
def test_steps_that_do_not_log_never_read_the_device(monkeypatch, loss, microbatch):
    model = small_model(loss)
    generator = torch.Generator().manual_seed(0)
    model.visual.set_token_reduction(ImageReductionConfig(strategy="random", ratio=0.5), generator)
    step = make_step(model, loss, dtype=torch.bfloat16, microbatch=microbatch, generators=(generator,))
    images, text = batch()
    step(images, text)  # first step: lazy initialisations may read what they like
    reads = HostReads(monkeypatch)
    for _ in range(3):
        step(images, text)
    assert reads.calls == [], f"a non-logging step read the device: {reads.calls}"
    stats = step.read()
    assert reads.calls == ["tolist"], "read() is one synchronisation"
    assert stats.skipped == 0 and stats.weights_finite and stats.loss == stats.loss


def test_the_temperature_starts_and_stays_under_the_cap():
    """The losses take exp(t) uncapped (OpenCLIP's ClipLoss), so the cap at 100 is the step's:
    a model loaded with t = ln 300 trains its first step at scale 100 (the loss the hand-written
    reference gives there), and t never leaves [0, ln 100]."""
    import math

    model = small_model()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(300.0))
    ref = copy.deepcopy(model)
    step = make_step(model)
    assert model.logit_scale.item() == torch.tensor(MAX_LOGIT_SCALE).item()  # on the cap, in fp32
    images, text = batch()
    img, txt, _ = ref(images, text)
    torch.testing.assert_close(step(images, text), clip_loss(img, txt, torch.tensor(100.0)), rtol=1e-5, atol=0)
    for _ in range(2):
        step(images, text)
        assert 0 <= model.logit_scale.item() <= MAX_LOGIT_SCALE


def test_non_finite_steps_are_skipped_on_the_device_and_counted():
    model = small_model()
    step = make_step(model)
    images, text = batch()
    step(images, text)
    before = copy.deepcopy(model.state_dict())
    steps_before = {id(p): float(s["step"]) for p, s in step.optimizer.state.items()}
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    for _ in range(3):
        step(bad, text)
    stats = step.read()
    assert stats.skipped == 3 and stats.consecutive == 3 and stats.loss != stats.loss and stats.weights_finite
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in a skipped step"
    assert {id(p): float(s["step"]) for p, s in step.optimizer.state.items()} == steps_before
    step(images, text)
    stats = step.read()
    assert stats.skipped == 3 and stats.consecutive == 0 and stats.loss == stats.loss  # the run ended
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_non_finite_weight_is_reported():
    model = small_model()
    step = make_step(model)
    step(*batch())
    with torch.no_grad():
        model.visual.proj[0, 0] = float("inf")
    assert not step.read().weights_finite


def test_fp16_scales_the_loss_skips_overflows_and_trains():
    """fp16 autocast with a gradient scaler (the CPU runs the same GradScaler code as CUDA):
    every overflowing step is skipped, leaves the weights alone and halves the scale; the
    others train."""
    model = small_model()
    step = make_step(model, dtype=torch.float16)
    images, text = batch()
    step(images, text)
    step.scaler.update(new_scale=torch.tensor(2.0**18))  # a few halvings above what this fp16 model takes
    trained = overflows = 0
    for _ in range(10):
        before, scale = copy.deepcopy(model.state_dict()), step.scaler.get_scale()
        skipped = step.read().skipped
        step(images, text)
        stats = step.read()
        changed = any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
        if stats.skipped > skipped:
            overflows += 1
            assert not changed and step.scaler.get_scale() == scale / 2
        else:
            trained += 1
            assert changed and stats.loss == stats.loss
    assert overflows >= 1 and trained >= 3 and stats.weights_finite


def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", cuda) == torch.float16  # V100, T4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert [autocast_dtype(p, cpu) for p in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]


def test_the_step_needs_a_fused_optimizer():
    model = small_model()
    with pytest.raises(ValueError, match="fused"):
        TrainStep(model, model.logit_scale, torch.optim.AdamW(model.parameters(), foreach=True), clip_loss,
                  device=torch.device("cpu"))


@pytest.mark.parametrize("loss,tiled", [("clip", "off"), ("clip", "on"), ("siglip", "off")], ids=["clip", "tiled", "siglip"])
@pytest.mark.parametrize("microbatch", [None, 4], ids=["plain", "microbatched"])
def test_trainer_trains_in_bf16_with_each_loss(tmp_path, loss, tiled, microbatch):
    """The trainer's step runs its forward in bf16 (the towers' outputs are bf16), every
    step trains (none skipped), and the step counters are read at log steps only."""
    from test_train import _params, tiny_cfg

    from clipa.train.trainer import Trainer

    args = ["train.precision=bf16", f"train.loss={loss}", f"train.tiled_loss={tiled}", "stage.samples=96",
            "stage.batch_size=16", "stage.warmup=1", "train.log_every=3"]
    if microbatch:
        args.append(f"train.microbatch_size={microbatch}")
    if loss == "siglip":
        args += ["model_overrides.init_logit_bias=-10.0", "model_overrides.init_logit_scale=2.3"]
    trainer = Trainer(tiny_cfg(tmp_path, *args))
    before = _params(trainer.model)
    dtypes, reads = set(), []
    trainer.model.visual.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    original = TrainStep.read

    def counted(self):
        reads.append(1)
        return original(self)

    TrainStep.read = counted
    try:
        results = trainer.fit()
    finally:
        TrainStep.read = original
    assert dtypes == {torch.bfloat16}
    assert trainer.skipped_steps == 0 and results and 0.0 <= results[-1]["acc1"] <= 1.0
    assert any(not torch.equal(v, before[k]) for k, v in _params(trainer.model).items())
    assert len(reads) == 4, "log steps 3 and 6, the stage end and its checkpoint"


FAULTS_OF_A_SECOND_ROUND = textwrap.dedent("""
    import resource, sys
    import torch
    from clipa.runtime import keep_freed_memory

    if sys.argv[1] == "keep":
        assert keep_freed_memory()

    def faults_of_a_second_round() -> int:
        blocks = [torch.ones(16 * 2**20) for _ in range(4)]  # 4 x 64 MiB, touched
        del blocks
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(16 * 2**20) for _ in range(4)]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del blocks  # only after the count: the second round must be live while it is counted
        return faults

    faults_of_a_second_round()  # the heap grows to the peak once
    print(faults_of_a_second_round())
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_host_memory_is_reused_without_page_faults():
    """After ``keep_freed_memory`` a step's worth of big blocks, freed and taken again, comes
    back from the heap: no page is faulted in again (by default each 64 MiB block is a fresh
    mapping, 16,384 faults of 4 KiB). In a fresh process: a long-lived one's heap holds other
    small blocks that can land in the freed space between the rounds."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_SECOND_ROUND, mode], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        return int(out.stdout.split()[-1])

    assert faults("keep") < 1000  # 0 here
    assert faults("default") >= 4 * 16_384  # 65,540 here: each block mapped anew

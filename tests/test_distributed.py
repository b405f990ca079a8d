"""Training across processes (gloo on CPU) against the same steps in one process.

Reference: plain single-process training on the whole global batch (``distributed`` and
``loss.global_loss`` take their trivial path). Tolerance: after 3 AdamW steps every parameter within 1e-5 of the
reference relative to that tensor's largest entry (fp32; the processes sum gradients in
a different order, so bitwise equality is not expected). AdamW runs with eps=1e-3: Adam
divides each gradient by its own size, which turns the rounding noise of gradients that
are exactly zero in theory (attention key biases) into updates of 1e-7 with the default
eps; a larger eps keeps the comparison about the gradients. Each test spawns 2 processes
once and runs several set-ups in them, to keep start-up cost down on a 2-core machine.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import clipa
from clipa import checkpoint as ckpt
from clipa import distributed
from clipa.bigbatch import forward_backward
from clipa.cli import main
from clipa.config import OptimConfig, StageConfig, TrainConfig, from_dict, load_config
from clipa.loss import clip_loss, global_loss, sigmoid_loss, tiled_clip_loss
from clipa.models.parallelize import parallelize
from clipa.train.optim import build_optimizer

WORLD, BATCH, STEPS = 2, 8, 3
LOSSES = {"clip": clip_loss, "tiled": functools.partial(tiled_clip_loss, tile=3), "siglip": sigmoid_loss}


def tiny_model(loss: str) -> clipa.CLIP:
    model = clipa.create_model(
        "clipa-tiny",
        embed_dim=16,
        vision={"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16},
        text={"context_length": 8, "width": 32, "heads": 2, "layers": 2, "vocab_size": 100},
        init_logit_bias=-5.0 if loss == "siglip" else None,
    )
    return model.train()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 16, 16, generator=g), torch.randint(1, 100, (BATCH, 8), generator=g)


def train_steps(info: distributed.DistInfo, kind: str, microbatch: int | None, loss: str,
                steps: int = STEPS, resume: str | None = None) -> dict:
    """Steps (with gradient clipping) on this rank's share of the fixed global batch, from a
    fresh model or from a single-process run's saved weights and optimizer state."""
    torch.manual_seed(10 + info.rank)  # ranks start from different weights: wrapping must sync them
    model = tiny_model(loss)
    if resume is not None:
        saved = torch.load(resume)
        model.load_state_dict(saved["model"])
    wrapped = parallelize(model, TrainConfig(parallel=kind), info.device, info.world_size)
    optimizer = build_optimizer(wrapped, OptimConfig(eps=1e-3), 1e-3)
    if resume is not None:
        restored = ckpt.Restored(model={}, optimizer=saved["optimizer"], rng=None, loader=None)
        ckpt.load_optimizer(Path(resume).parent, restored, wrapped, optimizer, info)
    images, text = (x.chunk(info.world_size)[info.rank] for x in global_batch())
    loss_fn = global_loss(LOSSES[loss], info.rank, info.world_size)
    losses, norms = [], []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        losses.append(forward_backward(wrapped, images, text, loss_fn, microbatch,
                                       no_sync=distributed.no_sync_factory(wrapped, info)))
        norms.append(float(distributed.clip_grad_norm(wrapped, 0.5)))
        optimizer.step()
    params = {k: v.detach().clone() for k, v in distributed.full_model(wrapped, model, info).state_dict().items()}
    return {"params": params, "losses": losses, "norms": norms, "optimizer": optimizer.state_dict()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> distributed.DistInfo:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return distributed.init_distributed("cpu")


def _steps_worker(rank: int, port: int, out: str, setups: list, resume: str | None) -> None:
    info = _join(rank, WORLD, port)
    results = {s: train_steps(info, *s) for s in setups}
    if resume is not None:  # the last step again, from the single-process state after the others
        results["resumed"] = train_steps(info, "fsdp", None, "clip", steps=1, resume=resume)
    if info.is_main:
        torch.save({k: {n: v for n, v in r.items() if n != "optimizer"} for k, r in results.items()}, out)
    distributed.shutdown()


def spawn(fn, *args) -> None:
    mp.start_processes(fn, args=(_free_port(), *args), nprocs=WORLD, join=True, start_method="spawn")


def assert_params_close(got: dict, ref: dict, start: dict, rtol: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    moved = max(((ref[k] - start[k]).abs().max() / start[k].abs().max().clamp(min=1e-12)).item() for k in ref)
    assert moved > 100 * rtol, "the reference barely moved: the comparison would be vacuous"
    for name, r in ref.items():
        err = (got[name] - r).abs().max().item()
        assert err <= rtol * r.abs().max().item(), f"{name}: max error {err:.3g} vs max |param| {r.abs().max():.3g}"


def reference(loss: str, steps: int = STEPS) -> tuple[dict, dict]:
    """(initial weights, single-process run on the global batch)."""
    torch.set_num_threads(1)
    torch.manual_seed(10)
    start = tiny_model(loss).state_dict()
    return start, train_steps(distributed.DistInfo(), "ddp", None, loss, steps=steps)


def check_against_single_process(tmp_path: Path, setups: list, resume_fsdp: bool = False) -> None:
    resume = None
    if resume_fsdp:  # a single-process optimizer state (numbered parameters) into a sharded optimizer
        _, two = reference("clip", steps=STEPS - 1)
        resume = str(tmp_path / "two_steps.pt")
        torch.save({"model": two["params"], "optimizer": two["optimizer"]}, resume)
    out = tmp_path / "ranks.pt"
    spawn(_steps_worker, str(out), setups, resume)
    got = torch.load(out)
    for kind, microbatch, loss in setups:
        start, ref = reference(loss)
        g = got[(kind, microbatch, loss)]
        assert_params_close(g["params"], ref["params"], start)
        torch.testing.assert_close(torch.tensor(g["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.tensor(g["norms"]), torch.tensor(ref["norms"]), rtol=1e-5, atol=0)
        assert ref["norms"][0] > 0.5, "gradient clipping should be active in this set-up"
    if resume_fsdp:
        start, ref = reference("clip")
        assert_params_close(got["resumed"]["params"], ref["params"], start)


def test_ddp_two_processes_match_one(tmp_path):
    """DDP on the whole batch, and with BASIC microbatches (no gradient sync before the
    last) and the tiled loss, gathered across ranks."""
    check_against_single_process(tmp_path, [("ddp", None, "clip"), ("ddp", 2, "tiled")])


@pytest.mark.slow
def test_fsdp_two_processes_match_one(tmp_path):
    """FSDP2 (blocks and root sharded, the 0-d temperature and bias replicated) with and
    without microbatches, every loss; ddp with microbatches and the plain and sigmoid
    losses; and a single-process optimizer state resumed into the sharded optimizer."""
    check_against_single_process(tmp_path, [("fsdp", None, "clip"), ("fsdp", 2, "clip"), ("fsdp", 2, "tiled"),
                                            ("fsdp", None, "siglip"), ("ddp", 2, "clip"), ("ddp", 2, "siglip")],
                                 resume_fsdp=True)


# ----------------------------------------------------------------------------- trainer and checkpoints

TINY_RUN = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "train.progress=false", "train.threads=1", "train.device=cpu", "train.parallel=fsdp",
    "stage.samples=64", "stage.batch_size=16", "stage.warmup=1", "train.microbatch_size=4",
]


def _trainer_worker(rank: int, port: int, runs: list) -> None:
    from clipa.train.trainer import Trainer

    _join(rank, WORLD, port)
    for output_dir, extra in runs:
        cfg = load_config(None, TINY_RUN + [f"train.output_dir={output_dir}", *extra])
        cfg.stages.append(from_dict(StageConfig, {"name": "bigger", "image_size": 24, "samples": 32,
                                                  "batch_size": 16, "warmup": 1}))
        trainer = Trainer(cfg)
        trainer.fit()
        if trainer.dist.is_main:
            torch.save(trainer.model.state_dict(), Path(output_dir) / "final.pt")
    distributed.shutdown()


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_under_two_ranks_and_loads_under_one(tmp_path):
    """Two stages (the second at a larger image size, so the model is unsharded and
    re-sharded in between); resume from a sharded checkpoint in the first stage."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    spawn(_trainer_worker, [(str(straight), ["train.checkpoint_every=2"])])
    middle = straight / "checkpoints" / "step_00000002"
    assert (middle / ckpt.SHARDED_DIR).is_dir() and not (middle / "model.safetensors").exists()

    spawn(_trainer_worker, [(str(resumed), [f"train.resume={middle}"])])
    a, b = torch.load(straight / "final.pt"), torch.load(resumed / "final.pt")
    for k in a:  # same ranks, same reduction order: the resumed run is bitwise the straight one
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)

    final = ckpt.latest_checkpoint(straight / "checkpoints")
    model, _ = clipa.load_model(final)  # one process, no process group: reads the shards whole
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, a[k], rtol=0, atol=0, msg=k)
    assert main(["export", str(final), "--output", str(tmp_path / "openclip")]) == 0  # `clipa export` reads shards
    exported = load_file(str(tmp_path / "openclip" / "open_clip_model.safetensors"))
    for k, v in a.items():
        torch.testing.assert_close(exported[k], v, rtol=0, atol=0, msg=k)
    alone = tmp_path / "consolidated"
    alone.mkdir()
    shutil.copy(ckpt.consolidate(final), alone / "model.safetensors")
    shutil.copy(final / "state.json", alone / "state.json")
    model, _ = clipa.load_model(alone)  # the consolidated file alone
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, a[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc-per-node 2 -m clipa train ...` end to end (ddp)."""
    args = [a for a in TINY_RUN if a != "train.parallel=fsdp"] + [f"train.output_dir={tmp_path}", "train.parallel=ddp"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "clipa", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("zero-shot top-1") == 1  # printed by rank 0 only
    model, _ = clipa.load_model(tmp_path)
    assert model.visual.image_size == 16

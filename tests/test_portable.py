"""Checkpoints move between device types: random states by device number, the masking
generator re-created on another device type, and a "GPU-written" checkpoint resumed on CPU.

No GPU is needed: CUDA's RNG functions and a CUDA masking generator are stand-ins with the
real ones' state shapes (a CUDA generator's state is 16 bytes of Philox seed and offset, a
CPU one's 5,056 bytes of Mersenne Twister).
"""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

from clipa import checkpoint as ckpt
from clipa.checksums import write_checksums
from clipa.train.trainer import Trainer

from test_train import _params, tiny_cfg


class StandInCudaGenerator:
    """What the checkpoint code uses of a ``torch.Generator(device="cuda")``."""

    device = torch.device("cuda")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def get_state(self) -> torch.Tensor:
        return torch.tensor([self.seed, 0], dtype=torch.int64).view(torch.uint8)  # seed, offset

    def set_state(self, state: torch.Tensor) -> None:
        if state.numel() != 16:
            raise RuntimeError(f"Expected a CUDA generator state of size 16, got {state.numel()}")
        self.seed = int(state.view(torch.int64)[0])

    def manual_seed(self, seed: int) -> "StandInCudaGenerator":
        self.seed = seed
        return self


def test_cuda_states_restore_in_device_number_order(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    states = {"cpu": torch.get_rng_state(), **{f"cuda{i}": torch.full((16,), i, dtype=torch.uint8) for i in range(12)}}
    ckpt.set_rng_state(states, None)
    assert [int(s[0]) for s in restored] == list(range(12))  # string order would put cuda10 after cuda1


def test_masking_generator_moves_between_device_types():
    cpu = torch.Generator().manual_seed(5)
    torch.rand(3, generator=cpu)
    written_on_cpu = ckpt.rng_state(cpu)
    assert "generator_cpu" in written_on_cpu

    # same device type: the stream continues exactly
    again = torch.Generator()
    ckpt.restore_generator(again, written_on_cpu)
    assert torch.equal(torch.rand(4, generator=again), torch.rand(4, generator=cpu))

    # CPU-written, resumed on a GPU: re-seeded from the saved state, the same way every time
    gpu_a, gpu_b = StandInCudaGenerator(), StandInCudaGenerator()
    ckpt.set_rng_state(written_on_cpu, gpu_a)
    ckpt.set_rng_state(written_on_cpu, gpu_b)
    assert gpu_a.seed == gpu_b.seed != 0

    # GPU-written (generator_cuda), resumed on CPU: re-seeded deterministically
    written_on_gpu = {"cpu": torch.get_rng_state(), "generator_cuda": StandInCudaGenerator(123).get_state()}
    cpu_a, cpu_b = torch.Generator(), torch.Generator()
    ckpt.restore_generator(cpu_a, written_on_gpu)
    ckpt.restore_generator(cpu_b, written_on_gpu)
    assert torch.equal(torch.rand(8, generator=cpu_a), torch.rand(8, generator=cpu_b))
    other = torch.Generator()
    ckpt.restore_generator(other, {"generator_cuda": StandInCudaGenerator(124).get_state()})
    assert not torch.equal(torch.rand(8, generator=other), torch.rand(8, generator=torch.Generator().set_state(cpu_a.get_state())))

    # an older checkpoint's unnamed "generator" key: set when it fits, re-seeded when it does not
    legacy = torch.Generator()
    ckpt.restore_generator(legacy, {"generator": StandInCudaGenerator(7).get_state()})
    ckpt.restore_generator(StandInCudaGenerator(), {"generator": cpu.get_state()})


def _as_if_written_on_gpu(step_dir) -> None:
    """Swap the checkpoint's CPU masking state for a CUDA one, as a GPU run writes it."""
    rng = load_file(str(step_dir / "rng.safetensors"))
    rng.pop("generator_cpu")
    rng["generator_cuda"] = StandInCudaGenerator(99).get_state()
    rng["cuda0"] = torch.zeros(16, dtype=torch.uint8)
    save_file(rng, str(step_dir / "rng.safetensors"))
    write_checksums(step_dir)  # as written: the checkpoint is intact


def test_a_gpu_written_checkpoint_resumes_on_cpu(tmp_path):
    """Weights, optimizer and data position continue exactly (no masking here, so the
    re-seeded masking generator is not drawn from and the runs must agree bitwise)."""
    args = ["stage.samples=128", "stage.batch_size=32", "stage.warmup=1", "train.checkpoint_every=2"]
    straight = Trainer(tiny_cfg(tmp_path / "a", *args))
    straight.fit()
    middle = tmp_path / "b" / "checkpoints" / "step_00000002"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_00000002", middle)
    _as_if_written_on_gpu(middle)
    resumed = Trainer(tiny_cfg(tmp_path / "b", *args, "train.resume=latest"))
    assert resumed.resume.path == middle  # (a damaged copy once made this a fresh run that matched by chance)
    resumed.fit()
    a, b = _params(straight.model), _params(resumed.model)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_the_big_batch_step_replays_the_cuda_generator(monkeypatch):
    """bigbatch's CUDA branch with a stand-in for the device's generator: the state saved
    before a microbatch's no-grad pass is what its re-run starts from."""
    from clipa import bigbatch

    cuda_state = {"now": torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state["now"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: cuda_state.update(now=state.clone()))
    masking = torch.Generator().manual_seed(3)
    saved = bigbatch._rng_state(torch.device("cuda", 0), [masking])
    first = torch.rand(2, generator=masking)
    cuda_state["now"] = torch.tensor([2], dtype=torch.uint8)  # the forward advanced the GPU's generator
    bigbatch._set_rng_state(torch.device("cuda", 0), [masking], saved)
    assert cuda_state["now"].tolist() == [1]
    assert torch.equal(torch.rand(2, generator=masking), first)

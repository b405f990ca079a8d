"""Files clipa writes are readable as the user's umask says (safetensors alone writes 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from clipa.files import save_tensors, umask


@pytest.fixture
def mask():
    """Run a test under a chosen umask and put the old one back."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("m", [0o022, 0o077, 0o002])
def test_safetensors_files_get_the_mode_open_gives(tmp_path, mask, m):
    mask(m)
    assert umask() == m
    with open(tmp_path / "plain.txt", "w"):  # the reference: what any ordinary file gets
        pass
    out = save_tensors({"w": torch.arange(3.0)}, tmp_path / "w.safetensors", {"format": "pt"})
    assert stat.S_IMODE(os.stat(out).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o666 & ~m
    torch.testing.assert_close(load_file(str(out))["w"], torch.arange(3.0))


def test_readable_by_group_and_others_under_umask_022(tmp_path, mask):
    mask(0o022)
    mode = stat.S_IMODE(os.stat(save_tensors({"w": torch.zeros(1)}, tmp_path / "w.safetensors")).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_checkpoint_and_export_files_readable_by_group_and_others(tmp_path, mask, tiny_model):
    """The acceptance check: under umask 022 every file of a checkpoint step and of an OpenCLIP
    export is readable by group and others (safetensors alone would write them 0600)."""
    from clipa import checkpoint as ckpt
    from clipa.distributed import DistInfo
    from clipa.export import export_openclip

    mask(0o022)
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    state = ckpt.TrainState(stage=0, stage_step=1, stage_done=False, global_step=1, config={})
    ckpt.CheckpointManager(tmp_path / "checkpoints", DistInfo()).save(state, tiny_model, tiny_model, optimizer,
                                                                      ckpt.rng_state(None))
    export_openclip(tiny_model, tmp_path / "export")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "optimizer.safetensors", "rng.safetensors",
                                       "open_clip_model.safetensors"}
    for p in files:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p

"""What a checkpoint path names (``checkpoint.resolve``) and that every loader takes all of
them: a run folder, its ``checkpoints/`` folder, a single-file or sharded step folder and
a bare weights file load the same tensors, bitwise (rtol = atol = 0)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import clipa
from clipa import checkpoint as ckpt
from clipa.checksums import ChecksumError, write_checksums
from clipa.config import ConfigError, load_config, to_dict
from clipa.distributed import DistInfo
from clipa.train.resume import locate

TINY = ["model_overrides={embed_dim: 16, vision: {image_size: 16, patch_size: 4, width: 32, layers: 1, "
        "head_width: 16}, text: {context_length: 8, width: 32, heads: 2, layers: 1}}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run folder with a single-file step 3 and a sharded step 5 holding the same weights
    (a sharded step as an fsdp run writes it: ``sharded/`` and no ``model.safetensors``)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config(None, TINY + [f"train.output_dir={root}"])
    torch.manual_seed(0)
    model = clipa.create_model(cfg.model, **cfg.model_overrides)
    optimizer = torch.optim.AdamW(model.parameters())
    state = ckpt.TrainState(stage=0, stage_step=3, stage_done=False, global_step=3, config=to_dict(cfg),
                            model=to_dict(model.cfg))
    single = root / "checkpoints" / "step_00000003"
    ckpt.CheckpointManager(single.parent, DistInfo()).save(state, model, model, optimizer, ckpt.rng_state(None))
    sharded = single.with_name("step_00000005")
    sharded.mkdir()
    shutil.copy(single / "state.json", sharded / "state.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=sharded / ckpt.SHARDED_DIR, no_dist=True)
    write_checksums(sharded)
    return root, {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, ref: dict) -> None:
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_resolve_names_each_kind_of_path(run, tmp_path):
    root, ref = run
    steps = root / "checkpoints"
    assert ckpt.resolve(root) == ckpt.Found("sharded", steps / "step_00000005")  # the latest step
    assert ckpt.resolve(steps) == ckpt.Found("sharded", steps / "step_00000005")
    assert ckpt.resolve(steps / "step_00000003") == ckpt.Found("single", steps / "step_00000003")
    weights = steps / "step_00000003" / "model.safetensors"
    assert ckpt.resolve(weights) == ckpt.Found("weights", weights)
    exported = tmp_path / "exported"  # a folder holding only model.safetensors
    exported.mkdir()
    shutil.copy(weights, exported)
    assert ckpt.resolve(exported) == ckpt.Found("weights", exported / "model.safetensors")


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'nope'}"):
        ckpt.resolve(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"no clipa checkpoint in {tmp_path}"):
        ckpt.resolve(tmp_path)
    damaged = tmp_path / "step_00000001"
    damaged.mkdir()
    (damaged / "state.json").write_text("{}")
    # resolve names where the checkpoint is; opening it checks what it holds and names the file
    assert ckpt.resolve(tmp_path) == ckpt.Found("single", damaged)
    with pytest.raises(ChecksumError, match=f"{tmp_path}: no intact checkpoint"):
        clipa.load_model(tmp_path)


@pytest.mark.parametrize("where", ["run", "checkpoints", "single", "sharded"])
def test_every_loader_takes_every_kind(run, where):
    root, ref = run
    path = {"run": root, "checkpoints": root / "checkpoints", "single": root / "checkpoints" / "step_00000003",
            "sharded": root / "checkpoints" / "step_00000005"}[where]
    model, cfg = clipa.load_model(path)
    assert not model.training and cfg.model == "clipa-tiny"
    assert_same_weights(model, ref)
    assert_same_weights(clipa.create_model("clipa-tiny", pretrained=path, **cfg.model_overrides), ref)
    found = ckpt.resolve(path).path
    state = ckpt.read_state(found)
    assert state.stage_step == 3
    for k, v in ref.items():
        torch.testing.assert_close(ckpt.restore(found, state, DistInfo()).model[k], v, rtol=0, atol=0, msg=k)


def test_weights_file_needs_a_model_name(run, tmp_path):
    root, ref = run
    weights = root / "checkpoints" / "step_00000003" / "model.safetensors"
    with pytest.raises(ValueError, match="is a weights file"):
        clipa.load_model(weights)
    cfg = load_config(None, TINY)
    assert_same_weights(clipa.create_model("clipa-tiny", pretrained=weights, **cfg.model_overrides), ref)
    torch.manual_seed(1)
    plain = clipa.create_model("clipa-tiny")
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}}, tmp_path / "w.pt")
    model, run_cfg = clipa.load_model(tmp_path / "w.pt", "clipa-tiny")  # a DDP-style torch file
    assert run_cfg is None and not model.training
    assert_same_weights(model, plain.state_dict())


def test_resume_setting(run, tmp_path):
    root, _ = run
    steps = root / "checkpoints"

    def located(resume: str | None, out: Path = root):
        point = locate(load_config(None, TINY + [f"train.output_dir={out}"] + ([f"train.resume={resume}"] if resume
                                                                               else [])), print)
        return None if point is None else point.path

    assert located(None) is None
    assert located("auto", tmp_path) is None  # nothing yet: start afresh
    assert located("latest") == steps / "step_00000005"
    assert located(str(root), tmp_path) == steps / "step_00000005"
    with pytest.raises(FileNotFoundError, match="train.resume="):
        located(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="weights file"):
        located(str(steps / "step_00000003" / "model.safetensors"))


def test_consolidate_writes_the_whole_model(run, tmp_path):
    root, ref = run
    step = tmp_path / "step_00000005"
    shutil.copytree(root / "checkpoints" / "step_00000005", step)
    out = ckpt.consolidate(step)
    assert out == step / "model.safetensors"
    assert_same_weights(clipa.load_model(out.parent)[0], ref)
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint"):
        ckpt.consolidate(root / "checkpoints" / "step_00000003")

"""`train.resume` continues a run with the run's own config: the command line may change only
what leaves the checkpoint's meaning intact, says what it changed, and names any other key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipa.checkpoint import TrainState
from clipa.cli import main
from clipa.config import ConfigError
from clipa.train.resume import ResumePoint, changes, is_safe, resolve_run

RECIPE = """\
model: clipa-tiny
model_overrides: {embed_dim: 32, vision: {layers: 1, width: 64, head_width: 32}, text: {layers: 1, width: 64, heads: 2}}
stages:
  - {name: small, image_size: 16, text_length: 8, samples: 96, batch_size: 32, warmup: 1}
  - {name: full, samples: 96, batch_size: 32, warmup: 1, image_reduction: {strategy: random, ratio: 0.5}}
train: {progress: false, checkpoint_every: 2, device: cpu, threads: 1}
"""
SMALL = ["model_overrides={embed_dim: 32, vision: {layers: 1, width: 64, head_width: 32}, "
         "text: {layers: 1, width: 64, heads: 2}}", "train.progress=false", "train.device=cpu", "train.threads=1",
         "stage.batch_size=32", "stage.warmup=1"]


def _weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dir / "model.safetensors"))


def test_resume_of_a_recipe_run_without_the_recipe_finishes_the_recipe(tmp_path, capsys):
    """Acceptance (issue 16): a two-stage recipe run stopped in its second stage resumes from
    `clipa train train.resume=latest train.output_dir=RUN` alone (no recipe: the default config
    has other sizes and failed with a state_dict mismatch) and ends with the weights of the
    uninterrupted run."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["train", str(recipe), f"train.output_dir={whole}"]) == 0
    steps = sorted(p.name for p in (whole / "checkpoints").iterdir())
    assert steps == ["step_00000002", "step_00000003", "step_00000005", "step_00000006"]
    # where things go is printed, and results.jsonl counts steps as the checkpoint folders do
    out = capsys.readouterr().out
    assert f"run folder: {whole.resolve()}" in out
    assert all(f"checkpoint: {whole / 'checkpoints' / s}" in out for s in steps)
    results = [json.loads(line) for line in (whole / "results.jsonl").read_text().splitlines()]
    assert [(r["stage_name"], r["step"], r["stage_step"]) for r in results] == [("small", 3, 3), ("full", 6, 3)]
    assert results[0]["samples"] == {"scored": 359, "skipped": {}} and "on 359 images" in out
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000006")  # stopped after step 2 of stage 1
    capsys.readouterr()

    assert main(["train", "train.resume=latest", f"train.output_dir={cut}"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {cut / 'checkpoints' / 'step_00000005'} with the run's own config (nothing changed)" in out
    assert "stage 1 'full'" in out
    want, got = _weights(whole / "checkpoints" / "step_00000006"), _weights(cut / "checkpoints" / "step_00000006")
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_a_resume_changes_only_safe_keys_and_says_so(tmp_path, capsys):
    """More samples in the last stage continue it (and the message names the change); a batch
    size or model change is one error naming the key; a run started with stage.samples=64
    keeps its 64 rather than the default's samples."""
    run = tmp_path / "run"
    assert main(["train", *SMALL, "stage.samples=64", f"train.output_dir={run}"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]
    resume = ["train.resume=latest", f"train.output_dir={run}"]

    said: list[str] = []
    cfg, point = resolve_run(None, resume, said.append)
    assert cfg.stages[0].samples == 64 and cfg.model_overrides["embed_dim"] == 32 and said[-1].endswith("(nothing changed)")
    assert point.path == run / "checkpoints" / "step_00000002" and point.verified
    with pytest.raises(ConfigError, match=r"^train.resume: stages.0.batch_size is 32 in the run being resumed .* "
                                          r"but 16 here"):
        resolve_run(None, [*resume, "stage.batch_size=16"])
    with pytest.raises(ConfigError, match=r"train.resume: model_overrides.embed_dim is 32 .* but 64 here"):
        resolve_run(None, [*resume, "model_overrides.embed_dim=64"])
    with pytest.raises(ConfigError, match=r"train.resume: model is 'clipa-tiny' .* but 'ViT-B-32' here"):
        resolve_run(None, [*resume, "model=ViT-B-32"])

    capsys.readouterr()
    assert main(["train", *resume, "stage.samples=128", "train.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert "changed: stages.0.samples: 64 -> 128, train.log_every: 10 -> 1" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    state = json.loads((run / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["config"]["stages"][0]["samples"] == 128 and state["stage_step"] == 4

    # where it runs may change (the checkpoint is portable), for resume=auto too: still the same run
    capsys.readouterr()
    assert main(["train", "train.resume=auto", f"train.output_dir={run}", "train.device=auto", "train.keep_last=1"]) == 0
    assert "changed: train.device: 'cpu' -> 'auto', train.keep_last: None -> 1" in capsys.readouterr().out


def test_which_keys_are_safe():
    assert is_safe("train.output_dir", 2) and is_safe("eval.max_samples", 2) and is_safe("train.wandb.project", 1)
    assert is_safe("stages.1.samples", 2) and is_safe("stages.2.lr", 2)  # the last stage's samples; a new stage
    assert not is_safe("stages.0.samples", 2) and not is_safe("stages.1.batch_size", 2)
    assert not is_safe("model", 2) and not is_safe("data.source", 2) and not is_safe("optim.weight_decay", 2)
    assert not is_safe("train.seed", 2) and not is_safe("data.workers", 2)  # workers shape the data order
    assert is_safe("train.device", 2) and is_safe("train.keep_last", 2) and is_safe("train.timeout_minutes", 2)


def test_changes_and_resume_point():
    from clipa.config import load_config

    a = load_config(None, ["stage.samples=64"])
    b = load_config(None, ["stage.samples=96", "train.seed=3"])
    assert changes(a, b) == [("stages.0.samples", 64, 96), ("train.seed", 0, 3)]
    def point(stage: int, step: int) -> ResumePoint:
        state = TrainState(stage=stage, stage_step=step, stage_done=False, global_step=step, config={})
        return ResumePoint(Path("step"), state, a, None, True)

    assert point(0, 2).position([2, 5]) == (1, 0)  # stage 0 done: stage 1 from its start
    assert point(0, 2).position([4, 5]) == (0, 2)  # stage 0 now longer: it continues
    with pytest.raises(ConfigError, match="checkpoint is in stage 2 but this config has 2 stage"):
        point(2, 1).position([4, 5])

"""Nothing a file says is trusted (issue 25): saved configs, model configs, weights and damaged
folders fail safe, in one line, before any work. One test per failure found on the earlier main
(the stalled rank's is ``test_run_safety.py::test_a_rank_stopped_mid_step_is_named_in_one_line``,
a resume with nothing intact ``test_one_plan.py::test_latest_with_nothing_intact_trains_nothing``)."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import clipa
from clipa.checksums import write_checksums
from clipa.cli import main
from conftest import openclip_folder

TINY = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "train.progress=false", "train.threads=1", "stage.warmup=1", "stage.batch_size=32",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny digits run with checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("untrusted") / "run"
    assert main(["train", *TINY, "stage.samples=64", "train.checkpoint_every=1", f"train.output_dir={out}"]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def one_line(err: str) -> str:
    assert err.startswith("clipa: error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------- 1. a saved config is data


def test_a_saved_config_never_runs_a_command(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    copied = copy_of(run, tmp_path)
    step = copied / "checkpoints" / "step_00000002"
    state = json.loads((step / "state.json").read_text())
    state["config"]["data"]["source"] = f"pipe:touch {marker}; cat shard.tar"
    (step / "state.json").write_text(json.dumps(state))
    write_checksums(step)  # an attacker rewrites them too
    capsys.readouterr()
    assert main(["train", f"train.resume={step}", f"train.output_dir={tmp_path / 'new'}"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "data.source reads 'pipe:touch" in err and "comes only from the saved config" in err
    assert "give data.source=... on the command line" in err
    assert not marker.exists() and not (tmp_path / "new").exists()
    # a saved eval.data that runs a command is refused by `clipa eval` too
    state["config"]["data"]["source"] = "digits"
    state["config"]["eval"]["data"] = f"pipe:touch {marker}"
    (step / "state.json").write_text(json.dumps(state))
    write_checksums(step)
    assert main(["eval", str(step), "--no-progress"]) == 2
    assert "give it with --data" in one_line(capsys.readouterr().err) and not marker.exists()


# ----------------------------------------------------------------------------- 3. damage by deletion


def test_a_checkpoint_missing_a_file_is_named_by_eval_export_and_resume(run, tmp_path, capsys, caplog):
    copied = copy_of(run, tmp_path)
    newest = copied / "checkpoints" / "step_00000002"
    (newest / "state.json").unlink()
    with caplog.at_level("WARNING", logger="clipa.checkpoint"):
        model, _ = clipa.load_model(copied)  # eval and export load through this
    assert "skipping damaged checkpoint step_00000002" in caplog.text and "state.json: missing" in caplog.text
    with pytest.raises(ValueError, match=r"step_00000002/state.json: missing"):
        clipa.load_model(newest)  # named explicitly: refused, not replaced by another
    capsys.readouterr()
    assert main(["train", *TINY, "stage.samples=96", "train.resume=latest", f"train.output_dir={copied}"]) == 0
    out = capsys.readouterr().out
    assert "skipping damaged checkpoint step_00000002" in out and "resuming from" in out and "step_00000001" in out


def test_a_checkpoint_without_checksums_is_unverified(run, tmp_path, capsys, caplog):
    copied = copy_of(run, tmp_path)
    step = copied / "checkpoints" / "step_00000002"
    (step / "checksums.json").unlink()
    weights = load_file(str(step / "model.safetensors"))
    weights["visual.proj"][0, 0] += 1.0  # a flipped value nothing can detect without the record
    save_file(weights, str(step / "model.safetensors"))
    with caplog.at_level("WARNING", logger="clipa.checkpoint"):
        clipa.load_model(step)
    assert "has no checksums.json: its files are unverified" in caplog.text
    capsys.readouterr()
    assert main(["train", *TINY, "stage.samples=96", f"train.resume={step}", f"train.output_dir={copied}"]) == 2
    assert "train.resume_unverified=true" in one_line(capsys.readouterr().err)
    assert main(["train", *TINY, "stage.samples=96", f"train.resume={step}", f"train.output_dir={copied}",
                 "train.resume_unverified=true"]) == 0
    assert "resuming it unverified" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 4. model sizes


def test_absurd_model_sizes_are_one_line_before_any_allocation(tmp_path, capsys):
    folder = openclip_folder(tmp_path / "odd", layers=10_000_000)
    assert main(["eval", f"local-dir:{folder}", "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err)
    # each block of width 32: 4 x 32^2 + 2 x 32 x 128 + 9 x 32 = 12,576 parameters, 10^7 of them
    assert "model.vision.layers: the model would have about 1.26e+11 parameters (503 GB in fp32)" in err
    cases = {"vision.width=1000000000": "model.vision.layers", "text.vocab_size=1000000000000": "model.text.vocab_size",
             "vision.image_size=1000000": "model.vision.image_size",
             "text.context_length=1000000000": "model.text.context_length",
             "embed_dim=-4": "model.embed_dim must be a positive finite number, got -4",
             "vision.patch_size=0": "model.vision.patch_size must be a positive finite number, got 0"}
    for override, named in cases.items():
        key, value = override.split("=")
        tree: dict = {}
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = int(value)
        with pytest.raises(clipa.config.ConfigError, match=named.replace("+", r"\+")):
            clipa.models.get_model_config("clipa-tiny", **tree)  # clipa.get_model_config is OpenCLIP's dict


# ----------------------------------------------------------------------------- 6. messages


def test_unsafe_and_wrong_weights_are_one_line(tmp_path, capsys):
    class RunsCode:
        def __reduce__(self):
            return print, ("ran",)

    torch.save({"state_dict": RunsCode()}, tmp_path / "evil.pt")
    assert main(["eval", str(tmp_path / "evil.pt"), "--model", "clipa-tiny", "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "refused: loading it would run '" in err and "print" in err and "weights_only=False" not in err

    model = clipa.create_model("clipa-tiny")
    extra = {**model.state_dict(), "stray.weight": torch.zeros(1)}
    save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp_path / "extra.safetensors"))
    assert main(["eval", str(tmp_path / "extra.safetensors"), "--model", "clipa-tiny", "--no-progress"]) == 2
    assert "does not hold this model's weights: 1 unexpected keys (stray.weight)" in one_line(capsys.readouterr().err)

    header = 90 * 10**6  # a 90 MB header of unknown keys: refused on its length, not parsed
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", header) + b"{" + b" " * 1000)
    assert main(["eval", str(tmp_path / "huge.safetensors"), "--model", "clipa-tiny", "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "a safetensors header of 90,000,000 bytes" in err and len(err) < 400

    folder = openclip_folder(tmp_path / "odd")
    (folder / "open_clip_config.json").write_text("{not json")
    assert main(["eval", str(folder), "--no-progress"]) == 2
    assert f"{folder / 'open_clip_config.json'}: not valid JSON" in one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- 7. inputs of the wrong kind


def test_inputs_of_the_wrong_kind_are_named(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "JPEG")
    photo.write_bytes(buf.getvalue())
    assert main(["train", *TINY, f"data.source={photo}", f"train.output_dir={tmp_path / 'run'}"]) == 2
    assert "photo.jpg is an image, not a data source" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # a run that failed before its first step leaves no folder
    assert main(["data", "convert", str(photo), "-o", str(tmp_path / "shards")]) == 2
    assert "is an image, not a data source" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "shards").exists()

    from conftest import image_bytes, write_samples

    write_samples(tmp_path / "small.tar", [(f"s{i}", {"jpg": image_bytes(i), "txt": b"a photo"}) for i in range(10)])
    assert main(["train", *TINY, f"data.source={tmp_path / 'small.tar'}", "data.workers=1",
                 f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "no complete batch of 32" in err and "read 10 sample(s) in all" in err and "lower stage.batch_size" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 8. stage values


@pytest.mark.parametrize("override, message", [
    ("stage.image_size=30", r"stages.0.image_size: .* 30 px is not a positive multiple of the patch size 4 "
                            r"\(nearest: 28 or 32 px\)"),
    ("stage.image_size=3", r"stages.0.image_size: .* 3 px is not a positive multiple of the patch size 4 "
                           r"\(nearest: 4 px\)"),
    ("stage.min_lr=0.1", r"stages.0.min_lr=0.1 is above the stage's peak learning rate 0.002"),
])
def test_impossible_stage_values_fail_before_the_run_folder(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["train", "train.progress=false", override, f"train.output_dir={out}"]) == 2
    err = one_line(capsys.readouterr().err)
    assert re.search(message, err), err
    assert not out.exists()


def test_samples_below_one_batch_say_what_will_run(tmp_path, capsys, caplog):
    with caplog.at_level("WARNING", logger="clipa.train"):
        assert main(["train", *TINY, "stage.samples=10", f"train.output_dir={tmp_path / 'run'}"]) == 0
    assert "samples=10 is less than one batch of 32; it trains one step of 32 samples" in caplog.text

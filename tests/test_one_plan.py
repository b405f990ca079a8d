"""One plan, one owner (issue 21): each setting decided once and handed on, so the seams where
two places disagreed hold: the evaluation after a stage sees the runtime's loader workers,
``clipa eval`` honours its flags through the training-time path, a resume hashes each file
once, a folder with nothing intact to continue trains nothing, and a model's preprocessing
travels with it into OpenCLIP."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipa
from clipa import checksums
from clipa.cli import main

TINY = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "train.progress=false", "train.threads=1", "stage.warmup=1",
]


def test_eval_data_with_default_workers_is_evaluated_after_the_stage(tmp_path, shared_data):
    """``data.workers`` unset: the runtime decides the loader workers once, for training and for
    the evaluation after the stage (which crashed on ``workers: null`` after the stage trained)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, f"eval.data={shared_data / 'cifar10'}", "eval.max_samples=100", "stage.samples=512",
                 f"train.output_dir={run}"]) == 0
    (record,) = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert record["samples"]["scored"] == 100 and record["samples"]["drawn"].startswith("100 of 10,000 samples")
    assert 0.0 <= record["acc1"] <= 1.0


def test_clipa_eval_of_a_run_honours_every_flag(tmp_path, capsys, monkeypatch):
    """Without ``--data``, ``clipa eval RUN`` evaluates what the run evaluated during training,
    through the same options: 50 evenly spaced held-out digits in batches of 8 under bf16
    autocast, written where ``--output`` says, and the table says how they were drawn."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "stage.samples=64", "stage.batch_size=32", f"train.output_dir={run}"]) == 0
    seen = []
    encode = clipa.CLIP.encode_image

    def spy(self, images, *a, **k):
        seen.append((images.shape[0], torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
        return encode(self, images, *a, **k)

    monkeypatch.setattr(clipa.CLIP, "encode_image", spy)
    capsys.readouterr()
    out = tmp_path / "f.json"
    assert main(["eval", str(run), "--max-samples", "50", "--batch-size", "8", "--precision", "bf16",
                 "--no-progress", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["dataset"] == "digits" and record["task"] == "zeroshot_classification"
    assert record["samples"] == {"scored": 50, "skipped": {},
                                 "drawn": "50 of 359 samples, evenly spaced over the whole set (1 in 7.18)"}
    assert [n for n, _ in seen] == [8] * 6 + [2] and {d for _, d in seen} == {torch.bfloat16}
    table = capsys.readouterr().out
    assert "digits: 50 of 359 samples" in table and "images" in table and "50" in table


def test_a_resume_hashes_each_checkpoint_file_once(tmp_path, monkeypatch):
    """Locating, checking and reading the checkpoint a resume continues reads each of its files'
    SHA-256 once in the process (they were hashed three times on rank 0)."""
    run = tmp_path / "run"
    args = ["train", *TINY, "stage.samples=128", "stage.batch_size=32", "train.checkpoint_every=2",
            f"train.output_dir={run}"]
    assert main(args) == 0
    resumed_from = run / "checkpoints" / "step_00000002"
    for later in ("step_00000004",):
        import shutil

        shutil.rmtree(run / "checkpoints" / later)
    hashed: Counter = Counter()
    real = checksums._sha256

    def counting(file: Path) -> str:
        hashed[Path(file)] += 1
        return real(file)

    monkeypatch.setattr(checksums, "_sha256", counting)
    assert main([*args, "train.resume=latest"]) == 0
    files = [p for p in resumed_from.rglob("*") if p.is_file() and p.name != checksums.CHECKSUM_FILE]
    assert files and {f: hashed[f] for f in files} == {f: 1 for f in files}


@pytest.mark.parametrize("state", ["every checkpoint damaged", "stopped before its first checkpoint", "a typo"])
def test_latest_with_nothing_intact_trains_nothing(tmp_path, capsys, state):
    """``train.resume=latest`` on a folder with no intact checkpoint names the folder and what it
    holds, and says how to start that run over from its own config; it never trains the default
    run into the folder, and the folder's config.json is left as it was."""
    run = tmp_path / "run"
    own = [*TINY, "stage.samples=64", "stage.batch_size=32", "train.seed=3", f"train.output_dir={run}"]
    assert main(["train", *own, "train.checkpoint_every=1"]) == 0
    if state == "every checkpoint damaged":
        for step in (run / "checkpoints").iterdir():
            weights = step / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
    elif state == "stopped before its first checkpoint":
        import shutil

        shutil.rmtree(run / "checkpoints")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    folder = run if state != "a typo" else tmp_path / "rnu"
    assert main(["train", "train.resume=latest", f"train.output_dir={folder}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipa: error: train.resume=latest: {folder}") and err.count("\n") == 1
    if state == "a typo":
        assert "does not exist: there is no run to continue" in err
    else:
        assert "has no intact checkpoint to continue" in err and "Nothing was trained" in err
        assert f"clipa train {run / 'config.json'} train.overwrite=true" in err
        if state == "every checkpoint damaged":
            assert "damaged checkpoint step_00000002" in err and "damaged checkpoint step_00000001" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "rnu").exists()
    if state != "a typo":  # what the message advises starts that run over, from its own config
        assert main(["train", str(run / "config.json"), "train.overwrite=true"]) == 0
        saved = json.loads((run / "config.json").read_text())
        assert saved["train"]["seed"] == 3 and saved["stages"][0]["samples"] == 64


@pytest.mark.slow
def test_an_exported_digits_model_keeps_its_preprocessing_in_openclip(tmp_path):
    """The default run trains on the digits' own statistics (0.5); its OpenCLIP export states
    them, so OpenCLIP's own preprocess of held-out digit images scores what clipa's transforms
    score on the same images, both above 85% (CLIP's statistics, stated before, scored less)."""
    open_clip = pytest.importorskip("open_clip")
    from clipa.data.digits import CLASSNAMES, EVAL_TEMPLATES, eval_split
    from clipa.eval.zeroshot import build_classifier

    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", f"train.output_dir={run}", "train.progress=false"]) == 0
    assert main(["export", str(run), "--format", "openclip", "--output", str(out)]) == 0
    preprocess_cfg = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess_cfg["mean"] == preprocess_cfg["std"] == [0.5, 0.5, 0.5]

    images, labels = eval_split(32)  # uint8 [N, 3, 32, 32]: held-out digits as images a user would have
    pictures = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]

    def accuracy(model, preprocess, tokenizer) -> float:
        model.eval()
        with torch.no_grad():
            classifier = build_classifier(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, "cpu")
            feats = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(p) for p in pictures])),
                                                  dim=-1)
        return float(((feats @ classifier).argmax(1) == labels).float().mean())

    theirs, _, their_preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    ours, _, our_preprocess = clipa.create_model_and_transforms(str(out))
    a = accuracy(theirs, their_preprocess, open_clip.get_tokenizer(f"local-dir:{out}"))
    b = accuracy(ours, our_preprocess, clipa.get_tokenizer(str(out)))
    assert a > 0.85 and b > 0.85 and abs(a - b) <= 0.02, (a, b)

"""The training loop: stages, exact resume, non-finite losses, position-table moves."""

import json

import pytest
import torch

import clipa
from clipa import checkpoint as ckpt
from clipa.config import load_config
from clipa.train.trainer import NonFiniteLossError, Trainer

TINY = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "train.progress=false",
    "train.threads=1",
]


def tiny_cfg(tmp_path, *overrides):
    return load_config(None, TINY + [f"train.output_dir={tmp_path}", *overrides])


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_stages_change_shapes_write_checkpoints_and_evaluate(tmp_path):
    second = {"name": "bigger", "image_size": 24, "text_length": 12, "samples": 64, "batch_size": 32,
              "warmup": 1, "image_reduction": {"strategy": "random", "ratio": 0.4}}
    cfg = tiny_cfg(tmp_path, "stage.samples=64", "stage.batch_size=32", "stage.warmup=1", "stage.text_length=8")
    from clipa.config import StageConfig, from_dict

    cfg.stages.append(from_dict(StageConfig, second))
    trainer = Trainer(cfg)
    results = trainer.fit()
    assert [r["stage"] for r in results] == [0, 1]
    assert all(0.0 <= r["acc1"] <= 1.0 for r in results)
    assert trainer.model.visual.positional_embedding.shape[0] == (24 // 4) ** 2 + 1
    assert trainer.model.context_length == 12
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    model, run_cfg = clipa.load_model(latest)
    assert model.visual.image_size == 24 and model.context_length == 12
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["stage_name"] for x in lines] == ["main", "bigger"]


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path, monkeypatch):
    args = ["stage.samples=192", "stage.batch_size=32", "stage.warmup=2", "train.checkpoint_every=2",
            "stage.image_reduction.strategy=random", "stage.image_reduction.ratio=0.5"]
    straight = Trainer(tiny_cfg(tmp_path / "a", *args))
    straight.fit()

    crashing = Trainer(tiny_cfg(tmp_path / "b", *args))
    calls = {"n": 0}
    original = crashing._report

    def crash_after_three(*a, **k):
        original(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(crashing, "_report", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000002"

    resumed = Trainer(tiny_cfg(tmp_path / "b", *args, "train.resume=latest"))
    resumed.fit()
    a, b = _params(straight.model), _params(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    import clipa.train.step as step_mod

    # the step counters are read at log steps: log every step to stop at exactly 3
    cfg = tiny_cfg(tmp_path, "stage.samples=320", "stage.batch_size=32", "train.max_bad_steps=3", "train.log_every=1")
    trainer = Trainer(cfg)
    before = _params(trainer.model)
    monkeypatch.setattr(step_mod, "forward_backward", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        trainer.fit()
    assert trainer.skipped_steps == 3
    after = _params(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_position_tables_move_between_resolutions(pos_embed):
    model = clipa.create_model("clipa-tiny", vision={"image_size": 64, "patch_size": 16, "pos_embed": pos_embed,
                                                     "layers": 1}, text={"layers": 1}).eval()
    before = model.visual.positional_embedding.detach().clone()
    model.visual.set_image_size(64)  # same size: exact round trip
    assert torch.equal(model.visual.positional_embedding, before)
    outs = []
    for size in (64, 224, 336):
        model.visual.set_image_size(size)
        assert model.visual.positional_embedding.shape[0] == (size // 16) ** 2 + 1
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            a, b = model.encode_image(x), model.encode_image(x)
        assert torch.isfinite(a).all() and torch.equal(a, b)
        outs.append(a)
    if pos_embed == "sincos":
        from clipa.models.pos_embed import sincos_2d

        torch.testing.assert_close(model.visual.positional_embedding, sincos_2d(128, 21, 21))
    text = torch.randint(0, 1000, (2, 16))
    model.set_context_length(16)
    with torch.no_grad():
        t16 = model.encode_text(text)
    model.set_context_length(32)
    model.set_context_length(16)
    with torch.no_grad():
        assert torch.isfinite(model.encode_text(text)).all()
    assert t16.shape == (2, 128)


def test_resume_at_a_stage_boundary_moves_to_the_next_stage_afresh(tmp_path, monkeypatch):
    from clipa.config import StageConfig, from_dict

    def cfg(out, *extra):
        c = tiny_cfg(out, "stage.samples=64", "stage.batch_size=32", "stage.warmup=1", *extra)
        c.stages.append(from_dict(StageConfig, {"name": "second", "image_size": 24, "text_length": 12,
                                                "samples": 64, "batch_size": 32, "warmup": 1, "lr": 5e-4}))
        return c

    straight = Trainer(cfg(tmp_path / "a"))
    straight.fit()

    crashing = Trainer(cfg(tmp_path / "b"))
    original = crashing._run_stage

    def crash_in_second_stage(plan, *a):
        if plan.index == 1:
            raise KeyboardInterrupt("simulated crash")
        return original(plan, *a)

    monkeypatch.setattr(crashing, "_run_stage", crash_in_second_stage)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed = Trainer(cfg(tmp_path / "b", "train.resume=latest"))
    resumed.fit()
    assert resumed.model.visual.image_size == 24
    a, b = _params(straight.model), _params(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

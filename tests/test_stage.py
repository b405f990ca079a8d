"""A stage resolved once: hand-worked sizes per rule, errors before any work, and the trainer
and the planner reading the same resolution."""

from __future__ import annotations

import pytest
import torch

from clipa.config import ConfigError, ImageReductionConfig, StageConfig, TextReductionConfig, load_config
from clipa.models.registry import get_model_config
from clipa.plan import plan_run
from clipa.train.stage import ResolvedStage, resolve_stage

B16 = get_model_config("ViT-B-16")  # 224 px, patch 16: a 14 x 14 grid; text 77


def stage(**kw) -> StageConfig:
    return StageConfig(samples=1000, batch_size=256, **kw)


def test_hand_worked_stages():
    assert resolve_stage(stage(), B16) == ResolvedStage(
        name="main", image_size=224, grid=(14, 14), seen_patches=196, text_length=77, steps=4,
        batch_size=256, local_batch=256)
    # resize to 25% of the patches: a 7 x 7 grid at 112 px, every patch seen
    r = resolve_stage(stage(image_reduction=ImageReductionConfig("resize", ratio=0.75), text_length=16), B16, 4)
    assert (r.image_size, r.grid, r.seen_patches, r.text_length, r.local_batch) == (112, (7, 7), 49, 16, 64)
    # grid masking keeps one patch per 2 x 2 window of 14 x 14; random keeps int(196 * 0.3) = 58
    assert resolve_stage(stage(image_reduction=ImageReductionConfig("grid")), B16).seen_patches == 49
    assert resolve_stage(stage(image_reduction=ImageReductionConfig("random", ratio=0.7)), B16).seen_patches == 58
    # a stage's own size wins over resize; block keeps a 5 x 5 square of round(sqrt(int(64 * 0.4)))
    r = resolve_stage(stage(image_size=128, image_reduction=ImageReductionConfig("block", ratio=0.6)), B16)
    assert (r.image_size, r.grid, r.seen_patches) == (128, (8, 8), 25)


def test_resolution_does_not_depend_on_a_moved_model():
    """Sizes come from the config, so a model moved by an earlier stage changes nothing."""
    import clipa

    model = clipa.create_model("clipa-tiny")
    before = resolve_stage(stage(), model.cfg)
    model.visual.set_image_size(48)
    model.set_context_length(8)
    assert resolve_stage(stage(), model.cfg) == before


def test_uneven_batches_and_unmeetable_rules_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="stage 'main': batch_size=256 does not split evenly over 3"):
        resolve_stage(stage(), B16, 3)
    with pytest.raises(ValueError, match="grid masking keeps one patch per s x s window"):
        resolve_stage(stage(image_reduction=ImageReductionConfig("grid", ratio=0.5)), B16)
    from clipa.train.trainer import Trainer

    cfg = load_config(None, [f"train.output_dir={tmp_path / 'run'}", "train.progress=false",
                             "stage.image_reduction.strategy=grid", "stage.image_reduction.ratio=0.5"])
    with pytest.raises(ValueError, match="grid masking"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_trainer_and_planner_use_the_same_resolution(tmp_path, monkeypatch):
    """The trainer moves the model, builds the loader and gives the big-batch step its masking
    generator from the resolved stage; ``clipa plan`` reports the same sizes."""
    import clipa.train.step as step_mod
    import clipa.train.trainer as trainer_mod

    cfg = load_config(None, [
        "model_overrides={embed_dim: 32, vision: {image_size: 32, patch_size: 4, width: 64, layers: 1,"
        " head_width: 32}, text: {width: 64, heads: 2, layers: 1}}",
        f"train.output_dir={tmp_path}", "train.progress=false", "train.threads=1",
        "stage.samples=64", "stage.batch_size=32", "stage.text_length=8",
        "stage.image_reduction.strategy=resize", "stage.image_reduction.ratio=0.75",
        "stage.text_reduction.strategy=random",
    ])
    trainer = trainer_mod.Trainer(cfg)
    (plan,) = trainer.stages
    assert (plan.image_size, plan.seen_patches, plan.text_length, plan.steps) == (16, 16, 8, 2)
    planned = plan_run(cfg)[0]
    assert (planned.image_size, planned.image_tokens, planned.text_tokens) == (16, 17, 8)
    seen = []

    def record(model, images, tokens, loss_fn, **kw):
        seen.append((images.shape, tokens.shape, tuple(kw["generators"])))
        return torch.tensor(1.0)

    monkeypatch.setattr(step_mod, "forward_backward", record)  # the trainer's step calls it
    trainer.fit()
    assert seen == [((32, 3, 16, 16), (32, 8), (trainer.generator,))] * 2
    assert trainer.model.visual.image_size == 16 and trainer.model.context_length == 8
    assert torch.equal(torch.tensor(trainer.model.visual.positional_embedding.shape), torch.tensor([17, 64]))


def test_text_reduction_choice_reaches_the_loader(tmp_path, monkeypatch):
    """The loader's tokenize step is the stage's rule at the stage's length (picklable)."""
    import pickle

    import clipa.train.trainer as trainer_mod
    from clipa.reduction.text import CaptionTokenizer

    built = {}

    def fake_loader(data, image_size, batch_size, tokenize, **kw):
        built.update(image_size=image_size, batch_size=batch_size, tokenize=tokenize)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "build_train_loader", fake_loader)
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "train.progress=false", "stage.text_length=6",
                             "stage.text_reduction.strategy=syntax", "stage.batch_size=16"])
    with pytest.raises(KeyboardInterrupt):
        trainer_mod.Trainer(cfg).fit()
    tokenize = built["tokenize"]
    assert isinstance(tokenize, CaptionTokenizer) and tokenize.cfg == TextReductionConfig("syntax")
    assert pickle.loads(pickle.dumps(tokenize))(["a small red dog runs on the grass"]).shape == (1, 6)
    assert (built["image_size"], built["batch_size"]) == (32, 16)

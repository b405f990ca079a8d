"""A stage resolved once: hand-worked sizes per rule, errors before any work, and the trainer
and the planner reading the same resolution."""

from __future__ import annotations

import pytest
import torch

from clipa.config import (ConfigError, DataConfig, ImageReductionConfig, RunConfig, StageConfig, StageDataConfig,
                          TextReductionConfig, TrainConfig, load_config)
from clipa.models.registry import get_model_config
from clipa.plan import plan_run
from clipa.train.stage import LRSchedule, ResolvedStage, resolve_stages

B16 = get_model_config("ViT-B-16")  # 224 px, patch 16: a 14 x 14 grid; text 77


def stage(**kw) -> StageConfig:
    return StageConfig(**{"samples": 1000, "batch_size": 256, **kw})


def resolve(s: StageConfig, model=B16, world_size: int = 1, **train) -> ResolvedStage:
    (plan,) = resolve_stages(RunConfig(stages=[s], train=TrainConfig(**train)), model, world_size)
    return plan


def test_hand_worked_stages():
    assert resolve(stage()) == ResolvedStage(
        index=0, name="main", image_size=224, grid=(14, 14), seen_patches=196, image_reduction=ImageReductionConfig(),
        text_length=77, text_reduction=TextReductionConfig(), samples=1000, steps=4, batch_size=256,
        local_batch=256, microbatch_size=None, lr=LRSchedule(1e-3, 100, "cosine", 0.0, 4), loss="clip",
        tiled_loss=False, data=DataConfig())
    # resize to 25% of the patches: a 7 x 7 grid at 112 px, every patch seen
    r = resolve(stage(image_reduction=ImageReductionConfig("resize", ratio=0.75), text_length=16), world_size=4)
    assert (r.image_size, r.grid, r.seen_patches, r.text_length, r.local_batch) == (112, (7, 7), 49, 16, 64)
    # grid masking keeps one patch per 2 x 2 window of 14 x 14; random keeps int(196 * 0.3) = 58
    assert resolve(stage(image_reduction=ImageReductionConfig("grid"))).seen_patches == 49
    assert resolve(stage(image_reduction=ImageReductionConfig("random", ratio=0.7))).seen_patches == 58
    # a stage's own size wins over resize; block keeps a 5 x 5 square of round(sqrt(int(64 * 0.4)))
    r = resolve(stage(image_size=128, image_reduction=ImageReductionConfig("block", ratio=0.6)))
    assert (r.image_size, r.grid, r.seen_patches) == (128, (8, 8), 25)


def test_the_plan_carries_the_schedule_data_loss_and_microbatch():
    """One mechanism for the learning rate: lr, or lr_per_256 x batch / 256 (8e-6 x 65,536 / 256
    = 2.048e-3); the stage's own source over the run's, the runtime's workers; the tiled loss
    from batch 8,192 under "auto"; a microbatch of at least the local batch is no microbatch."""
    big = stage(batch_size=65536, lr_per_256=8e-6, warmup=2, min_lr=1e-6, data=StageDataConfig("/shards/{0..9}.tar"))
    cfg = RunConfig(data=DataConfig(source="/run/{0..9}.tar"), stages=[stage(lr=0.5), big],
                    train=TrainConfig(microbatch_size=1024))
    first, second = resolve_stages(cfg, B16, world_size=8, workers=3)
    assert first.lr.peak == 0.5 and second.lr.peak == pytest.approx(2.048e-3, rel=1e-12)
    assert second.lr == LRSchedule(pytest.approx(2.048e-3), 2, "cosine", 1e-6, 1)
    assert (first.data.source, second.data.source) == ("/run/{0..9}.tar", "/shards/{0..9}.tar")
    assert first.data.workers == second.data.workers == 3 and cfg.data.workers is None  # decided, not changed
    assert (first.tiled_loss, second.tiled_loss) == (False, True)
    assert (first.local_batch, first.microbatch_size, second.microbatch_size) == (32, None, 1024)
    # warm-up then cosine, hand-worked: steps 0, 1 of a 2-step warm-up, then half-way down the cosine
    schedule = LRSchedule(peak=1.0, warmup=2, kind="cosine", min_lr=0.0, steps=6)
    assert [schedule.at(s) for s in (0, 1, 2, 4)] == [0.5, 1.0, 1.0, pytest.approx(0.5)]
    assert LRSchedule(1.0, 0, "constant", 0.0, 6).at(5) == 1.0


def test_resolution_does_not_depend_on_a_moved_model():
    """Sizes come from the config, so a model moved by an earlier stage changes nothing."""
    import clipa

    model = clipa.create_model("clipa-tiny")
    before = resolve(stage(), model.cfg)
    model.visual.set_image_size(48)
    model.set_context_length(8)
    assert resolve(stage(), model.cfg) == before


def test_uneven_batches_and_unmeetable_rules_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="stage 'main': batch_size=256 does not split evenly over 3"):
        resolve(stage(), B16, 3)
    with pytest.raises(ValueError, match="grid masking keeps one patch per s x s window"):
        resolve(stage(image_reduction=ImageReductionConfig("grid", ratio=0.5)))
    with pytest.raises(ValueError, match=r"stages.0.image_size: .* 230 px is not a positive multiple of the patch "
                                         r"size 16 \(nearest: 224 or 240 px\)"):
        resolve(stage(image_size=230))
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

"""The published recipes after composition: every value they resolved to before ``base:`` and
``lr_per_256`` existed (recorded below from the hand-written files), and each ``*_336`` recipe
is its ``*_224`` one plus one stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipa.config import load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if "base" not in p.relative_to(CONFIGS).parts)

V1_GPU = {"pos_embed": "sincos"}
V1_L16 = {"pos_embed": "sincos", "pool": "avg"}
V2 = {"pos_embed": "sincos", "act": "gelu_tanh"}
# Recorded from the recipes as they were written out in full (lr multiplied by hand):
# model, model_overrides.vision, optim.eps, train.parallel, then per stage
# (name, image_size, image strategy, ratio, text_length, text strategy, samples, batch, lr, warmup).
EXPECTED_224 = {
    "clipa_v1_b16_112_224": ("ViT-B-16", V1_GPU, 1e-6, "ddp", [
        ("pretrain-112", 112, "resize", 0.0, 16, "truncate", 2562334000, 65536, 2.048e-3, 782),
        ("finetune-224", 224, "none", 0.0, 32, "truncate", 131072000, 8192, 2.56e-5, 3072),
    ]),
    "clipa_v1_l16_64_224": ("ViT-L-16", V1_L16, 1e-6, "ddp", [
        ("pretrain-64", 64, "resize", 0.0, 16, "syntax", 2562334000, 32768, 1.024e-3, 1563),
        ("finetune-224", 224, "none", 0.0, 32, "truncate", 131072000, 7168, 2.24e-5, 3571),
    ]),
    "clipa_v1_l16_96_224": ("ViT-L-16", V1_L16, 1e-6, "ddp", [
        ("pretrain-96", 96, "resize", 0.0, 8, "syntax", 2562334000, 32768, 1.024e-3, 1563),
        ("finetune-224", 224, "none", 0.0, 32, "truncate", 131072000, 7168, 2.24e-5, 3571),
    ]),
    "clipa_v2_bigg14_dc1b_84_224": ("ViT-bigG-14-CLIPA", V2, 1e-8, "fsdp", [
        ("pretrain-84", 84, "resize", 0.0, 8, "syntax", 12811670000, 65536, 1.024e-3, 3200),
        ("finetune-224", 224, "random", 0.4, 32, "truncate", 524288000, 16384, 2.56e-5, 0),
    ]),
    "clipa_v2_h14_dc1b_70_224": ("ViT-H-14-CLIPA", V2, 1e-8, "ddp", [
        ("pretrain-70", 70, "resize", 0.0, 8, "syntax", 12811670000, 65536, 2.048e-3, 3200),
        ("finetune-224", 224, "random", 0.3, 32, "truncate", 524288000, 32768, 5.12e-5, 800),
    ]),
    "clipa_v2_h14_dc1b_84_224": ("ViT-H-14-CLIPA", V2, 1e-8, "ddp", [
        ("pretrain-84", 84, "resize", 0.0, 8, "syntax", 12811670000, 65536, 2.048e-3, 3200),
        ("finetune-224", 224, "random", 0.3, 32, "truncate", 524288000, 32768, 5.12e-5, 800),
    ]),
    "clipa_v2_h14_l2b_84_224": ("ViT-H-14-CLIPA", V2, 1e-8, "ddp", [
        ("pretrain-84", 84, "resize", 0.0, 8, "syntax", 12811670000, 65536, 2.048e-3, 3200),
        ("finetune-224", 224, "random", 0.3, 32, "truncate", 524288000, 32768, 5.12e-5, 800),
    ]),
    "clipa_v2_l14_dc1b_84_224": ("ViT-L-14-CLIPA", V2, 1e-8, "ddp", [
        ("pretrain-84", 84, "resize", 0.0, 8, "syntax", 12811670000, 65536, 2.048e-3, 3200),
        ("finetune-224", 224, "random", 0.3, 32, "truncate", 524288000, 32768, 5.12e-5, 800),
    ]),
}
STAGE_336 = ("finetune-336", 336, "random", 0.4, 32, "truncate", 131072000, 16384, 6.4e-6, 1600)
PAIRS = sorted(p.stem[: -len("_336")] for p in CONFIGS.glob("*_336.yaml"))


def _row(stage) -> tuple:
    return (stage.name, stage.image_size, stage.image_reduction.strategy, stage.image_reduction.ratio,
            stage.text_length, stage.text_reduction.strategy, stage.samples, stage.batch_size, stage.peak_lr,
            stage.warmup)


def test_every_recipe_loads_and_bases_are_not_recipes():
    assert len(RECIPES) == 14  # 12 published rows + 2 CPU-sized
    for path in RECIPES:
        load_config(path)
    assert sorted(p.name for p in (CONFIGS / "base").glob("*.yaml")) == [
        "clipa_v1.yaml", "clipa_v1_l16.yaml", "clipa_v2.yaml"]


def test_cpu_recipes_keep_few_checkpoints():
    """The CPU demos write a checkpoint every 40 steps over hundreds of steps: they keep the
    newest two, not gigabytes of them."""
    tiny = sorted((CONFIGS / "tiny").glob("*.yaml"))
    assert tiny
    for path in tiny:
        train = load_config(path).train
        assert train.checkpoint_every and train.keep_last == 2, path.name


@pytest.mark.parametrize("name", sorted(EXPECTED_224))
def test_224_recipes_resolve_to_the_recorded_values(name):
    model, vision, eps, parallel, stages = EXPECTED_224[name]
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (cfg.model, cfg.model_overrides["vision"], cfg.optim.eps, cfg.train.parallel) == (
        model, vision, eps, parallel)
    assert cfg.model_overrides["grad_checkpointing"] is True
    assert (cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay, cfg.optim.grad_clip) == (0.9, 0.95, 0.2, None)
    assert (cfg.train.precision, cfg.train.output_dir) == ("bf16", f"runs/{name}")
    assert cfg.data.resampled and cfg.data.scale == (0.4, 1.0) and cfg.data.source.startswith("/path/to/")
    jitter = name.startswith("clipa_v2") or "_l16_" in name
    assert cfg.data.color_jitter == ((0.32, 0.32, 0.32, 0.08) if jitter else None)
    assert cfg.data.grayscale_prob == (0.2 if jitter else 0.0)
    assert len(cfg.stages) == len(stages)
    for got, want in zip(cfg.stages, stages):
        assert _row(got)[:8] == want[:8] and got.warmup == want[9]
        # lr is lr_per_256 x batch / 256 now; it must equal the hand-multiplied value
        assert got.peak_lr == pytest.approx(want[8], rel=1e-12)


@pytest.mark.parametrize("name", PAIRS)
def test_336_recipe_is_its_224_recipe_plus_one_stage(name):
    base, full = load_config(CONFIGS / f"{name}.yaml"), load_config(CONFIGS / f"{name}_336.yaml")
    assert full.model == base.model + "-336"
    assert full.stages[:-1] == base.stages
    assert _row(full.stages[-1])[:8] == STAGE_336[:8]
    assert full.stages[-1].peak_lr == pytest.approx(STAGE_336[8], rel=1e-12)
    assert full.stages[-1].warmup == STAGE_336[9]
    a, b = to_dict(base), to_dict(full)
    for d in (a, b):
        del d["model"], d["stages"], d["train"]["output_dir"]
    assert a == b
    assert full.train.output_dir == f"runs/{name}_336"


def test_published_stages_state_their_learning_rate_scaling():
    """Every stage of a published recipe gives lr_per_256, one of the values the sources publish
    (docs/reference.md#clipa-v2-hyper-parameters); tests/test_plan.py checks the scaling."""
    published = {8e-6, 4e-6, 8e-7, 4e-7, 1e-7}
    for path in RECIPES:
        if path.parent != CONFIGS:
            continue
        for stage in load_config(path).stages:
            assert stage.lr_per_256 in published, (path.name, stage.name)


def test_every_cited_reference_anchor_exists():
    """Every citation of a docs/reference.md section (by its anchor) names a real one."""
    root = CONFIGS.parent
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', (root / "docs" / "reference.md").read_text()))
    files = [p for d in ("configs", "src", "tests", "docs", "benchmarks") for p in (root / d).rglob("*")
             if p.suffix in (".py", ".yaml", ".md")] + [root / "README.md"]
    cited = {(p.name, a) for p in files for a in re.findall(r"reference\.md#([a-z0-9-]+)", p.read_text())}
    assert cited, "the recipes cite docs/reference.md"
    assert {c for c in cited if c[1] not in anchors} == set()

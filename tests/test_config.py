"""Strict config loading: bad keys and values fail before any work, naming what is valid."""

import pytest

from clipa.config import ConfigError, RunConfig, load_config


def test_default_config_is_the_digits_demo():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.source == "digits"


def test_unknown_key_names_the_valid_ones(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.learning_rate'.*seed"):
        load_config(path)


def test_unknown_override_and_wrong_type_fail():
    with pytest.raises(ConfigError, match="unknown config key 'optim.betas'"):
        load_config(None, ["optim.betas=0.9"])
    with pytest.raises(ConfigError, match="train.seed: expected an integer"):
        load_config(None, ["train.seed=abc"])
    with pytest.raises(ConfigError, match="train.loss: 'triplet' is not one of"):
        load_config(None, ["train.loss=triplet"])


def test_overrides_parse_yaml_values_and_stage_shorthand():
    cfg = load_config(None, ["stage.lr=1e-3", "train.seed=3", "data.scale=[0.5, 1.0]",
                             "stage.image_reduction.strategy=random", "stage.image_reduction.ratio=0.3"])
    assert cfg.stages[0].lr == pytest.approx(1e-3)
    assert cfg.train.seed == 3
    assert cfg.data.scale == (0.5, 1.0)
    assert cfg.stages[0].image_reduction.ratio == pytest.approx(0.3)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        load_config(path)


def test_overrides_without_a_file_keep_the_default_stage():
    default = load_config().stages[0]
    cfg = load_config(None, ["train.output_dir=/tmp/x"])
    assert cfg.stages[0] == default
    assert load_config(None, ["stage.lr=0.5"]).stages[0].samples == default.samples

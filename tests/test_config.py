"""Strict config loading: bad keys and values fail before any work, naming what is valid."""

import re

import pytest
import yaml

from clipa.config import ConfigError, RunConfig, load_config, to_dict


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


def test_overrides_without_a_file_keep_the_default_stage():
    default = load_config().stages[0]
    cfg = load_config(None, ["train.output_dir=/tmp/x"])
    assert cfg.stages[0] == default
    assert load_config(None, ["stage.lr=0.5"]).stages[0].samples == default.samples


@pytest.mark.parametrize("override,message", [
    ("stage.image_reduction.strategy=mask", "stages.0.image_reduction.strategy: 'mask' is not one of "
                                            "none, resize, random, grid, block"),
    ("stage.image_reduction.grid_position=center", "'center' is not one of fixed, random"),
    ("stage.text_reduction.strategy=nouns", "'nouns' is not one of truncate, random, block, syntax"),
    ("stage.text_reduction.tagger=spacy", "tagger: 'spacy' is not one of builtin, nltk"),
    ("stage.schedule=linear", "stages.0.schedule: 'linear' is not one of cosine, constant"),
    ("train.device=mps", "train.device: 'mps' is not one of auto, cpu, cuda"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
    ("train.tiled_loss=always", "train.tiled_loss: 'always' is not one of auto, on, off"),
    ("train.parallel=tp", "train.parallel: 'tp' is not one of ddp, fsdp"),
    ("data.caption_choice=last", "data.caption_choice: 'last' is not one of random, first"),
    ("train.loss=1", "train.loss: 1 is not one of clip, siglip"),
])
def test_bad_choice_names_the_key_and_the_valid_ones(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("key,value,message", [
    ("pool", "max", "model.vision.pool: 'max' is not one of tok, avg"),
    ("pos_embed", "rope", "model.vision.pos_embed: 'rope' is not one of learned, sincos"),
    ("act", "relu", "model.vision.act: 'relu' is not one of gelu, gelu_tanh, quick_gelu"),
])
def test_bad_model_choice_names_the_valid_ones(key, value, message):
    from clipa.models.registry import get_model_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        get_model_config("clipa-tiny", vision={key: value})
    with pytest.raises(ConfigError, match=re.escape("model.text.pool: 'eot' is not one of argmax, last, first")):
        get_model_config("clipa-tiny", text={"pool": "eot"})
    with pytest.raises(ConfigError, match=re.escape("model.text.tokenizer: 'sp' is not one of clip, bert")):
        get_model_config("clipa-tiny", text={"tokenizer": "sp"})


def test_yaml_on_and_off_are_the_tiled_loss_choices():
    """YAML 1.1 reads unquoted on/off as true/false; for a choice that has "on"/"off" they mean it."""
    assert load_config(None, ["train.tiled_loss=on"]).train.tiled_loss == "on"
    assert load_config(None, ["train.tiled_loss=off"]).train.tiled_loss == "off"


def test_ranges_are_still_checked():
    with pytest.raises(ConfigError, match=r"stages.0.image_reduction.ratio must be in \[0, 1\)"):
        load_config(None, ["stage.image_reduction.ratio=1.0"])
    with pytest.raises(ConfigError, match="stages.0.batch_size must be a positive finite number, got 0"):
        load_config(None, ["stage.batch_size=0"])
    with pytest.raises(ConfigError, match="train.microbatch_size must be a positive"):
        load_config(None, ["train.microbatch_size=0"])


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


STAGE = "{name: %s, samples: 64, batch_size: 32, lr: 0.1}"


def test_base_merges_mappings_and_replaces_lists(tmp_path):
    """A worked example: the child changes one key of a section, keeps the rest, and its
    stages and data.scale replace the base's."""
    _write(tmp_path / "base" / "family.yaml",
           "train: {seed: 3, log_every: 7}\ndata: {workers: 2, scale: [0.5, 1.0]}\n"
           f"stages: [{STAGE % 'a'}, {STAGE % 'b'}]\n")
    child = _write(tmp_path / "run.yaml",
                   "base: base/family.yaml\ntrain: {seed: 4}\ndata: {scale: [0.9, 1.0]}\n"
                   f"stages: [{STAGE % 'c'}]\n")
    cfg = load_config(child)
    assert (cfg.train.seed, cfg.train.log_every) == (4, 7)
    assert (cfg.data.workers, cfg.data.scale) == (2, (0.9, 1.0))
    assert [s.name for s in cfg.stages] == ["c"]


def test_base_chain_is_relative_to_each_file_and_stages_plus_appends(tmp_path):
    _write(tmp_path / "a" / "root.yaml", f"model: clipa-tiny\nstages: [{STAGE % 'one'}]\n")
    _write(tmp_path / "a" / "mid.yaml", f"base: root.yaml\nstages+: [{STAGE % 'two'}]\n")
    leaf = _write(tmp_path / "leaf.yaml", f"base: a/mid.yaml\nstages+: [{STAGE % 'three'}]\n"
                                          "train: {output_dir: runs/leaf}\n")
    cfg = load_config(leaf, ["stages.2.samples=128"])
    assert [s.name for s in cfg.stages] == ["one", "two", "three"]
    assert cfg.stages[2].samples == 128 and cfg.train.output_dir == "runs/leaf"


@pytest.mark.parametrize("base_text,child_text,message", [
    ("train: {seed: 1}\n", f"stages+: [{STAGE % 'x'}]\n", "stages+: appends a list to the base's list 'stages'"),
    (f"stages: [{STAGE % 'a'}]\n", f"stages: []\nstages+: [{STAGE % 'x'}]\n",
     "stages: give 'stages' or 'stages+', not both"),
    ("base: run.yaml\n", "", "chain loops back"),
    ("train: {sed: 1}\n", "", "unknown config key 'train.sed'"),
])
def test_bad_compositions_fail_clearly(tmp_path, base_text, child_text, message):
    _write(tmp_path / "b.yaml", base_text)
    child = _write(tmp_path / "run.yaml", "base: b.yaml\n" + child_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(child)


def test_missing_base_names_the_file(tmp_path):
    child = _write(tmp_path / "run.yaml", "base: nope/base.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*nope/base.yaml"):
        load_config(child)


def test_lr_per_256_scales_with_the_batch_when_the_config_loads(tmp_path):
    """Hand-worked: 4e-6 per 256 at batch 1024 is 1.6e-5; an override of the batch to 64
    rescales it to 1e-6; an lr override replaces the scaling."""
    path = _write(tmp_path / "run.yaml", "stages: [{samples: 4096, batch_size: 1024, lr_per_256: 4.0e-6}]\n")
    assert load_config(path).stages[0].peak_lr == pytest.approx(1.6e-5, rel=1e-12)
    assert load_config(path, ["stage.batch_size=64"]).stages[0].peak_lr == pytest.approx(1e-6, rel=1e-12)
    fixed = load_config(path, ["stage.lr=3e-4", "stage.batch_size=64"]).stages[0]
    assert (fixed.lr, fixed.lr_per_256) == (pytest.approx(3e-4), None)


def test_lr_and_lr_per_256_together_must_agree(tmp_path):
    both = _write(tmp_path / "both.yaml", "stages: [{batch_size: 512, lr: 1.0e-3, lr_per_256: 1.0e-4}]\n")
    with pytest.raises(ConfigError, match="stages.0: give lr or lr_per_256"):
        load_config(both)
    # a saved config (to_dict) carries both, in agreement, and loads back to itself
    saved = to_dict(load_config(None, ["stage.lr_per_256=1e-4", "stage.batch_size=512"]))
    path = _write(tmp_path / "saved.yaml", yaml.safe_dump(saved))
    assert to_dict(load_config(path)) == saved


@pytest.mark.parametrize("override, key", [
    # each would run and give a wrong result: a negative clip flips the gradients, a negative
    # weight drops a source, a zero length means "the model's", an infinite lr NaNs the weights
    ("optim.grad_clip=-1", "optim.grad_clip"),
    ("optim.grad_clip=0", "optim.grad_clip"),
    ("data.weights=[1,-1]", "data.weights.1"),
    ("data.weights=[0,1]", "data.weights.0"),
    ("stage.text_length=0", "stages.0.text_length"),
    ("stage.image_size=-224", "stages.0.image_size"),
    ("stage.lr=.inf", "stages.0.lr"),
    ("stage.lr=.nan", "stages.0.lr"),
    ("stage.lr=0", "stages.0.lr"),
    ("stage.lr_per_256=-1e-3", "stages.0.lr_per_256"),
    ("stage.lr_per_256=.inf", "stages.0.lr_per_256"),
    ("stage.samples=-5", "stages.0.samples"),
    ("stage.warmup=-1", "stages.0.warmup"),
    ("stage.min_lr=-1e-5", "stages.0.min_lr"),
    ("stage.image_reduction.keep=0", "stages.0.image_reduction.keep"),
    ("optim.beta2=1.0", "optim.beta2"),
    ("optim.eps=0", "optim.eps"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.max_samples=0", "eval.max_samples"),
    ("eval.every=-1", "eval.every"),
    ("train.microbatch_size=-8", "train.microbatch_size"),
    ("train.keep_last=0", "train.keep_last"),
    ("train.timeout_minutes=0", "train.timeout_minutes"),
    ("train.timeout_minutes=.inf", "train.timeout_minutes"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.max_bad_steps=0", "train.max_bad_steps"),
    ("data.grayscale_prob=1.5", "data.grayscale_prob"),
    ("data.scale=[0,1]", "data.scale.0"),
    ("data.workers=-1", "data.workers"),
])
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be "):
        load_config(None, [override])


def test_ranges_of_later_stages_name_the_stage(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "stages: [%s, %s]" % (STAGE % "a", "{name: b, samples: 8, batch_size: 4, lr: -1}"))
    with pytest.raises(ConfigError, match=r"^stages.1.lr must be a positive finite number, got -1.0"):
        load_config(recipe)


def test_none_disables_and_boundary_values_pass():
    cfg = load_config(None, ["optim.grad_clip=null", "data.weights=[2,0.5]", "stage.text_length=1",
                             "stage.warmup=0", "train.keep_last=1", "data.scale=[1,1]", "optim.beta1=0"])
    assert cfg.optim.grad_clip is None and cfg.stages[0].text_length == 1 and cfg.train.keep_last == 1


def test_data_scale_must_be_ordered():
    with pytest.raises(ConfigError, match=r"data.scale: the smaller area comes first"):
        load_config(None, ["data.scale=[0.9,0.4]"])


def test_run_folder_and_restart_settings():
    cfg = load_config(None, ["train.resume=auto", "train.overwrite=true", "train.timeout_minutes=2.5"])
    assert (cfg.train.resume, cfg.train.overwrite, cfg.train.timeout_minutes) == ("auto", True, 2.5)
    default = load_config(None)
    assert (default.train.overwrite, default.train.keep_last) == (False, None)
    assert 0 < default.train.timeout_minutes <= 60, "the collective timeout is minutes, not hours"


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    recipe = _write(tmp_path / "broken.yaml", "train:\n  seed: 1\n stages: [\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(recipe))}: not valid YAML: .*\(line 3, column 2\)$"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"^override 'stage.lr=\[1,': the value is not valid YAML"):
        load_config(None, ["stage.lr=[1,"])


@pytest.mark.parametrize("override, message", [
    ("stages.3.lr=1", r"^stages.3.lr: stages.3 names no item: stages has 1 \(numbered from 0\)$"),
    ("stages.x.lr=1", r"^stages.x.lr: stages.x names no item"),
    ("stages.-1.lr=1", r"^stages.-1.lr: stages.-1 names no item"),
    ("stage.lr.x=1", r"^stage.lr.x: lr is a single value, it has no 'x'$"),
])
def test_overrides_into_a_missing_stage_or_below_a_value_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])

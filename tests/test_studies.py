"""The studies' shared rules (benchmarks/study.py): seeds as a list, runs two at a time giving
what one at a time gives, and a claim's verdict in seed standard deviations, worked by hand."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


@pytest.fixture(scope="module")
def study():
    # on the path as ``python benchmarks/study_*.py`` puts it, where spawned workers import it too
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module("study")
    finally:
        sys.path.remove(BENCHMARKS)


def test_seeds_are_a_list(study):
    assert study.seed_list("3,4,5") == [3, 4, 5]
    assert study.seed_list("7") == [7]
    for bad in ["", "1,1", "a,b", "1.5"]:
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            study.seed_list(bad)


def _rows(favoured, other):
    return ([{"setting": "a", "stage": "finetune", "object_acc1": v} for v in favoured]
            + [{"setting": "b", "stage": "finetune", "object_acc1": v} for v in other]
            + [{"setting": "a", "stage": "pretrain", "object_acc1": 0.0}])  # not selected


def test_claim_verdicts_worked_by_hand(study):
    # a: mean 0.6, b: mean 0.3, both sample variance 0.01 -> pooled sd 0.1, effect 0.3 / 0.1 = 3.0
    rows = _rows([0.5, 0.6, 0.7], [0.2, 0.3, 0.4])
    after = lambda r: r["stage"] == "finetune"  # noqa: E731
    c = study.claim("a beats b", "paper", "a", "b", rows, after)
    assert c["effect_sds"] == pytest.approx(3.0) and c["difference"] == pytest.approx(0.3)
    assert c["verdict"] == "reproduced" and c["seeds"] == 3
    assert c["microscope"] == "a 0.600 ± 0.100 vs b 0.300 ± 0.100"
    assert study.claim("b beats a", "paper", "b", "a", rows, after)["verdict"] == "contradicted"
    # 0.1 apart with sds 0.1: one seed deviation, inside the two that decide
    close = _rows([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert study.claim("a beats b", "paper", "a", "b", close, after)["verdict"] == "not resolved"
    assert study.claim("a keeps b", "paper", "a", "b", close, after, equivalence=True)["verdict"] == "consistent"
    with pytest.raises(ValueError, match="two seeds"):
        study.effect([0.5], [0.4])


def test_two_runs_at_a_time_give_what_one_at_a_time_gives(study):
    """Two 2-step runs per seed, in order, the same figures from spawned workers as in-process."""
    settings = {"tiny": dict(size="micro-32", fields={"batch": 32}, stages=[study.stage("main", 64, batch_size=32)])}
    alone = study.sweep("test", settings, [0, 1], jobs=1)
    paired = study.sweep("test", settings, [0, 1], jobs=2)
    assert [r["seed"] for r in paired] == [0, 1] and all(r["batch"] == 32 for r in paired)
    for a, b in zip(alone, paired):
        assert {k: a[k] for k in study.METRICS} == {k: b[k] for k in study.METRICS}


def test_settings_after_a_shared_pretraining_start_from_its_weights(study):
    """Each setting's table begins with its seed's shared pretraining, and the setting trains on
    from those weights: its figures differ from the same stage run from scratch."""
    tiny = dict(size="micro-32")
    then = lambda folder: {"on": dict(tiny, start_from=folder, fields={"batch": 32},  # noqa: E731
                                      stages=[study.stage("main", 64, batch_size=32)])}
    pretrain = dict(tiny, stages=[study.stage("pretrain", 128, batch_size=32)])
    rows, table = study.after_shared_pretraining("test", pretrain, then, [0])
    assert list(table) == ["on"]
    assert [(r["setting"], r["stage"], r["batch"]) for r in rows] == [("on", "pretrain", 32), ("on", "main", 32)]
    scratch = study.sweep("test", {"on": dict(tiny, stages=[study.stage("main", 64, batch_size=32)])}, [0])
    assert {k: rows[1][k] for k in study.METRICS} != {k: scratch[0][k] for k in study.METRICS}

"""The built-in data sources (``data.source: digits`` or ``world``), each one record.

A built-in source is made in memory rather than read from disk, so it carries what a source
on disk leaves to the user: its loader, how many training samples it has (a batch larger than
that never fills), the pixel statistics its images are normalised with (a model trained on it
takes them as its ``preprocess``) and its own held-out evaluation. Nothing else in clipa tests
a source's name: the trainer, the evaluation and ``clipa eval`` look the record up here.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..config import ConfigError, ModelConfig, PreprocessConfig, RunConfig

# The digits' (and the world's, drawn from the digits) own normalisation, (x - 0.5) / 0.5 on
# grey: with CLIP's mean and std instead the default run's recipe reaches 39-46% zero-shot
# top-1 rather than 89% (measured, two renderings).
GREY = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", resize_mode="squash")


@dataclass(frozen=True)
class BuiltIn:
    """One built-in source; ``loader`` and ``evaluate`` are ``module:name`` under ``clipa``,
    imported when used (the evaluation lives with the other evaluators, above the data layer)."""

    name: str
    loader: str
    """A class built as ``cls(image_size, batch_size, tokenize, seed=, state=, rank=, world_size=)``."""
    train_samples: int | None
    """Distinct training samples (None: drawn afresh for every batch, no limit)."""
    preprocess: PreprocessConfig
    """How its uint8 images become model input; a model trained on the source keeps it."""
    evaluate: str
    """``fn(model, tokenizer, options) -> metrics``: the source's held-out evaluation."""

    def load(self, attr: str) -> Callable[..., Any]:
        module, name = getattr(self, attr).split(":")
        return getattr(importlib.import_module(f"clipa.{module}"), name)


BUILT_IN: dict[str, BuiltIn] = {
    # 1,797 digits, 20% held out (round(359.4) = 359): 1,438 train
    "digits": BuiltIn("digits", "data.digits:DigitsLoader", 1438, GREY, "eval.builtin:evaluate_digits"),
    "world": BuiltIn("world", "data.world:WorldLoader", None, GREY, "eval.builtin:evaluate_world"),
}


def built_in(source: str) -> BuiltIn | None:
    """The record of a built-in source name, or None for a source on disk."""
    return BUILT_IN.get(source)


def with_source_preprocess(model: ModelConfig, run: RunConfig) -> ModelConfig:
    """``model`` with the preprocessing of the run's built-in training source: its images exist
    only in that normalisation, so a model trained on them keeps it (unless the run sets its
    own, ``model_overrides.preprocess``). Stages reading built-in sources that disagree are refused."""
    sources = [run.data.source] + [s.data.source for s in run.stages if s.data.source is not None]
    wanted: list[PreprocessConfig] = []
    for b in filter(None, map(built_in, sources)):
        if b.preprocess not in wanted:
            wanted.append(b.preprocess)
    if not wanted or "preprocess" in run.model_overrides:
        return model
    if len(wanted) > 1 or any(built_in(src) is None for src in sources):
        raise ConfigError(f"data sources {', '.join(sorted(set(sources)))} need different pixel preprocessing; "
                          "set model_overrides.preprocess to the one to train with")
    return dataclasses.replace(model, preprocess=wanted[0])

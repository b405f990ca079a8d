"""What a resumed run trains: the run's own saved config, changed only where that is safe.

``clipa train train.resume=latest train.output_dir=RUN`` names a run, not a recipe, so the
config comes from the checkpoint being resumed (its ``state.json``), with the command line's
``key=value`` overrides on top. A recipe given as well must agree with it. What may differ
(``is_safe``): where it runs and how it reports and saves (:data:`EXECUTION`: device,
``train.output_dir``, logging, checkpoint cadence, evaluation), more or fewer samples in the
run's last stage, and stages added after it. Anything else (a model size, a batch size, an
earlier stage's schedule) would make the checkpoint mean something else: that is an error
naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checkpoint
from ..config import ConfigError, RunConfig, config_from_tree, load_config, to_dict

# Keys that say where a run executes and how it reports and saves, not what it computes (a
# checkpoint is portable across devices; the loader's worker count is part of its data order,
# so data.workers is not one). A restart may change them and still be the same run
# (``run_folder``'s resume=auto test); a resume may also extend the schedule (``is_safe``).
EXECUTION = {"train.resume", "train.overwrite", "train.output_dir", "train.device", "train.threads",
             "train.compile", "train.tf32", "train.cudnn_benchmark", "train.keep_host_memory", "train.progress",
             "train.log_every", "train.checkpoint_every", "train.keep_last", "train.timeout_minutes",
             "train.max_bad_steps", "pretrained"}
EXECUTION_PREFIXES = ("train.wandb", "eval.")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"stages.0.samples": 3200, ...}``: every leaf of a config tree by its dotted key; a
    list of mappings (stages) is indexed, other lists are leaves."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


_ABSENT = object()


def changes(saved: RunConfig, wanted: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, wanted value) for every key whose value differs, in key order."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(wanted))
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys(), key=_natural)
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def is_execution(key: str) -> bool:
    """Does ``key`` only say where and how the run executes and reports (:data:`EXECUTION`)?"""
    return key in EXECUTION or key.startswith(EXECUTION_PREFIXES)


def is_safe(key: str, saved_stages: int) -> bool:
    """May a resume change ``key``? Execution keys, the last stage's samples, appended stages."""
    if is_execution(key):
        return True
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 1 and parts[1].isdigit():
        index = int(parts[1])
        return index >= saved_stages or (index == saved_stages - 1 and parts[2:] == ["samples"])
    return False


def shown(value: Any) -> str:
    return "(none)" if value is _ABSENT else repr(value)


def change_text(key: str, was: Any, now: Any) -> str:
    """One entry of :func:`changes` as the logs and errors show it: ``key: was -> now``."""
    return f"{key}: {shown(was)} -> {shown(now)}"


def resolve_config(config: str | Path | None, overrides: list[str]) -> tuple[RunConfig, str | None]:
    """The config ``clipa train [CONFIG] [overrides]`` runs, and what to tell the user about a
    resume (None when the run starts afresh)."""
    wanted = load_config(config, overrides)
    step = checkpoint.resume_from(wanted.train.resume, Path(wanted.train.output_dir) / "checkpoints")
    if step is None:
        return wanted, None
    saved = checkpoint.run_config(checkpoint.resolve(step))
    if config is None:  # the run's own config, with the command line on top
        wanted = config_from_tree(to_dict(saved), overrides)
    changed = changes(saved, wanted)
    for key, was, now in changed:
        if not is_safe(key, len(saved.stages)):
            raise ConfigError(
                f"train.resume: {key} is {shown(was)} in the run being resumed ({step}) but {shown(now)} here; "
                "a resume keeps the run's config except where it runs (device, threads), logging, checkpoint and "
                "eval settings, the last stage's samples and stages added after it (start a new run in another "
                "train.output_dir to change it)")
    listed = [change_text(*c) for c in changed if c[0] not in ("train.resume", "train.output_dir")]
    note = f"resuming {step} with the run's own config" + (
        "; changed: " + ", ".join(listed) if listed else " (nothing changed)")
    return wanted, note


def resume_point(state: dict, steps: list[int]) -> tuple[int, int, dict | None]:
    """(stage, step within it, loader state) a run continues from, given a checkpoint's
    ``state.json`` and the step count of each stage it now runs: a stage that now has more
    steps than the checkpoint reached continues, even if the checkpoint ended it."""
    stage, step = state["stage"], state["stage_step"]
    if stage >= len(steps):
        raise ConfigError(f"train.resume: the checkpoint is in stage {stage} but this config has {len(steps)} "
                          "stage(s); resume with the run's own config (give no recipe)")
    if step >= steps[stage]:  # done: the next stage starts afresh
        return stage + 1, 0, None
    return stage, step, state.get("loader")

"""Resuming: which checkpoint, with which config, decided once per process.

:func:`locate` finds the step folder ``train.resume`` names, verifies its files once and
returns a :class:`ResumePoint` (the checkpoint's state, its run and model configs as data);
the run folder and the trainer take that record and never look again.

``clipa train train.resume=latest train.output_dir=RUN`` names a run, not a recipe, so the
config is the run's own (the checkpoint's), with the command line's ``key=value`` overrides on
top (:func:`resolve_run`); a recipe given as well must agree with it. Whether the config is
still the same run is one rule, :func:`other_run`, for ``latest``, ``auto`` and a path alike:
it may differ in where the run executes and how it reports and saves (:data:`EXECUTION`), in
more or fewer samples in the run's last stage, and in stages added after it. Anything else (a
model size, a batch size, an earlier stage's schedule) would make the checkpoint mean
something else: that is an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import checkpoint
from ..checksums import CHECKSUM_FILE
from ..config import ConfigError, ModelConfig, RunConfig, config_from_tree, external_actions, load_config, to_dict
from ..distributed import DistInfo

# Keys that say where a run executes and how it reports and saves, not what it computes (a
# checkpoint is portable across devices; the loader's worker count is part of its data order,
# so data.workers is not one).
EXECUTION = {"train.resume", "train.overwrite", "train.resume_unverified", "train.output_dir", "train.device", "train.threads",
             "train.compile", "train.tf32", "train.cudnn_benchmark", "train.keep_host_memory", "train.progress",
             "train.log_every", "train.checkpoint_every", "train.keep_last", "train.timeout_minutes",
             "train.max_bad_steps", "pretrained"}
EXECUTION_PREFIXES = ("train.wandb", "eval.")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"stages.0.samples": 3200, ...}``: every leaf of a config tree by its dotted key; a
    list of mappings (stages) is indexed, other lists are leaves."""
    if isinstance(tree, dict):  # an empty mapping has no leaves: {} and a missing key read the same
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


def is_safe(key: str, saved_stages: int) -> bool:
    """May the same run differ in ``key``? Execution keys, the last stage's samples, appended stages."""
    if key in EXECUTION or key.startswith(EXECUTION_PREFIXES):
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


def other_run(saved: RunConfig, wanted: RunConfig) -> list[tuple[str, Any, Any]]:
    """The changes by which ``wanted`` is another run than ``saved`` (empty: the same run)."""
    return [c for c in changes(saved, wanted) if not is_safe(c[0], len(saved.stages))]


@dataclass
class ResumePoint:
    """A located, verified checkpoint: what a resume continues from."""

    path: Path
    state: checkpoint.TrainState
    config: RunConfig
    """The run config it was written with (read as data, checked like a recipe)."""
    model: ModelConfig | None
    """The model config it was built with (None in checkpoints that did not record it)."""
    verified: bool
    """Checksums vouched for every file (False: a folder written before checksums existed)."""

    def position(self, steps: list[int]) -> tuple[int, int]:
        """(stage, step within it) the run continues from, given the step count of each stage it
        now runs: a stage that now has more steps than the checkpoint reached continues, even if
        the checkpoint ended it."""
        stage, step = self.state.stage, self.state.stage_step
        if stage >= len(steps):
            raise ConfigError(f"train.resume: the checkpoint is in stage {stage} but this config has {len(steps)} "
                              "stage(s); resume with the run's own config (give no recipe)")
        if step >= steps[stage]:  # done: the next stage starts afresh
            return stage + 1, 0
        return stage, step

    def restore(self, info: DistInfo) -> checkpoint.Restored:
        """The checkpoint's tensors for this rank (read, not verified again)."""
        return checkpoint.restore(self.path, self.state, info)


def _point(path: Path, verified: bool, cfg: RunConfig) -> ResumePoint:
    if not verified and not cfg.train.resume_unverified:
        raise ConfigError(f"train.resume: {path} has no {CHECKSUM_FILE}, so its files cannot be verified (written "
                          "before clipa recorded checksums, or copied without them): resume from it anyway with "
                          "train.resume_unverified=true")
    state = checkpoint.read_state(path)
    where = path / checkpoint.STATE_FILE
    return ResumePoint(path, state, state.run_config(where), state.model_config(where), verified)


def locate(cfg: RunConfig, log: Callable[[str], None] = print) -> ResumePoint | None:
    """The checkpoint ``cfg.train.resume`` names, verified once (None: start afresh). "latest"
    and "auto" take the newest intact step folder of ``train.output_dir`` (damaged newer ones
    skipped with a warning); "latest" finding none is an error saying what the folder holds,
    "auto" finding none starts afresh unless damaged checkpoints are all there is. A path must
    name an intact step folder."""
    setting = cfg.train.resume
    if setting is None:
        return None
    if setting not in ("latest", "auto"):
        try:
            found = checkpoint.resolve(setting)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"train.resume={setting}: {e}") from None
        if not found.is_step:
            raise ConfigError(f"train.resume={setting} is a weights file, not a clipa checkpoint: "
                              "start from it with pretrained= instead")
        return _point(found.path, checkpoint.verify(found.path), cfg)
    out = Path(cfg.train.output_dir)
    found, damaged = checkpoint.newest_intact(out / "checkpoints", log)
    if found is not None:
        return _point(*found, cfg)
    if setting == "auto" and not damaged:
        return None
    raise ConfigError(f"train.resume={setting}: {_nothing_to_continue(out, damaged)}")


def _nothing_to_continue(out: Path, damaged: list[str]) -> str:
    """Why a folder gives a resume nothing to continue, and what the user can do."""
    if not out.exists():
        return (f"{out} does not exist: there is no run to continue (check train.output_dir; "
                "train.resume=auto starts the run when there is none)")
    held = [f"damaged checkpoint {d}" for d in damaged]
    if (out / "config.json").exists():
        held.append("config.json")
    if not held:
        return (f"{out} holds no run (no checkpoint, no config.json): check train.output_dir; "
                "train.resume=auto starts the run when there is none")
    restart = (f"clipa train {out / 'config.json'} train.overwrite=true" if (out / "config.json").exists()
               else "train.overwrite=true with the run's recipe")
    return (f"{out} has no intact checkpoint to continue (it holds: {'; '.join(held)}). Nothing was trained. "
            f"To start that run over from its own config, deleting what is there: {restart}")


def check_same_run(point: ResumePoint, wanted: RunConfig) -> list[str]:
    """Raise unless ``wanted`` is ``point``'s run; return its allowed changes as text (the
    output folder and resume setting left out: they always differ in kind, not meaning)."""
    for key, was, now in other_run(point.config, wanted):
        raise ConfigError(
            f"train.resume: {key} is {shown(was)} in the run being resumed ({point.path}) but {shown(now)} here; "
            "a resume keeps the run's config except where it runs (device, threads), logging, checkpoint and "
            "eval settings, the last stage's samples and stages added after it (start a new run in another "
            "train.output_dir to change it)")
    return [change_text(*c) for c in changes(point.config, wanted)
            if c[0] not in ("train.resume", "train.output_dir", "train.overwrite")]


def _given(key: str, overrides: list[str]) -> bool:
    """Does a command-line override set ``key`` (itself, a mapping above it, or one of its keys)?"""
    for item in overrides:
        name = item.split("=", 1)[0]
        if name.startswith("stage."):  # the shorthand for every stage
            name = "stages.*." + name[len("stage."):]
        parts, mine = name.split("."), key.split(".")
        if all(a in (b, "*") for a, b in zip(parts, mine)):
            return True
    return False


def refuse_saved_actions(cfg: RunConfig, overrides: list[str], point: ResumePoint) -> None:
    """A saved config is data, never an instruction: a setting that would run a command, download
    or send data (``config.external_actions``) and comes only from the checkpoint's config, not
    from the command line, is refused with one line saying how to give it. A resume builds its
    model from the checkpoint (its recorded config, its weights): ``pretrained`` and a recorded
    model's name fetch nothing then."""
    skip = {"pretrained"} | ({"model"} if point.model is not None else set())
    actions = [a for a in external_actions(cfg) if a[0] not in skip]
    tokenizer = point.model.text.tokenizer_path if point.model is not None else None
    if tokenizer is not None and not Path(tokenizer).exists():
        actions.append(("model_overrides.text.tokenizer_path", f"loads the tokenizer {tokenizer!r} from the hub"))
    for key, action in actions:
        if not _given(key, overrides):
            raise ConfigError(f"train.resume: {key} {action}, and it comes only from the saved config of "
                              f"{point.path}, which is data, not an instruction: give {key}=... on the command "
                              "line to use it")


def resolve_run(config: str | Path | None, overrides: list[str],
                log: Callable[[str], None] = print) -> tuple[RunConfig, ResumePoint | None]:
    """The config ``clipa train [CONFIG] [overrides]`` runs and the checkpoint it continues (None
    when the run starts afresh). Without a recipe, a resumed run's config is its own with the
    command line on top; with one, the recipe must describe the same run."""
    wanted = load_config(config, overrides)
    point = locate(wanted, log)
    if point is None:
        return wanted, None
    if config is None:
        wanted = config_from_tree(to_dict(point.config), overrides)
        refuse_saved_actions(wanted, overrides, point)
    changed = check_same_run(point, wanted)
    log(f"resuming {point.path} with the run's own config"
        + ("; changed: " + ", ".join(changed) if changed else " (nothing changed)"))
    if not point.verified:
        log(f"warning: {point.path} has no {CHECKSUM_FILE}: resuming it unverified (train.resume_unverified=true)")
    return wanted, point


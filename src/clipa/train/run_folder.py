"""A run folder belongs to one run.

- **A lock** (``.lock``: PID, host, start time) stops two live runs from writing into one
  folder. Rank 0 holds it while the run lives and refreshes it every ``HEARTBEAT_S``; a lock
  whose process is gone (same host), or that has not been refreshed for ``STALE_AFTER_S``
  (another host), was left by a crash and is removed.
- **One run**: a new run (``train.resume`` unset, or ``auto`` finding no checkpoint) into a
  folder holding checkpoints stops with an error, unless ``train.overwrite`` deletes them
  first; into a folder holding another run's ``config.json`` (a run stopped before its first
  checkpoint) likewise. The same run's ``config.json`` is a restart from step 0, said so. Which
  checkpoint a resume continues, and whether it is this run's, is ``resume``'s one decision.
- Half-written checkpoint folders of dead writers are removed at the start (safe: the lock
  says no other writer is alive).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .. import checkpoint
from ..config import ConfigError, RunConfig, from_dict, to_dict, validate
from .resume import ResumePoint, change_text, other_run

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0

class RunFolderError(ValueError):
    """The run folder is in use, or holds another run's checkpoints."""


def _alive(holder: dict, lock: Path) -> bool:
    """Whether the run that wrote ``holder`` into ``lock`` still lives."""
    if holder.get("host") != socket.gethostname():
        return time.time() - lock.stat().st_mtime < STALE_AFTER_S
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; its parent just has not collected it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _take(lock: Path, log: Callable[[str], None]) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):  # being written this instant, or garbled
                holder = {}
            if holder and _alive(holder, lock):
                raise RunFolderError(
                    f"{lock.parent} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"since {holder.get('started')}); wait for it to end or choose another train.output_dir"
                ) from None
            log(f"removing the lock of a run that ended without releasing it ({holder or 'unreadable'})")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return
    raise RunFolderError(f"{lock}: could not take the run folder's lock (another run is starting?)")


@contextmanager
def locked(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``out/.lock`` (creating ``out``) for the duration; refreshed in the background."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    _take(lock, log)
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            try:
                os.utime(lock)
            except OSError:
                pass

    beat = threading.Thread(target=heartbeat, name="clipa-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        done.set()
        lock.unlink(missing_ok=True)


def run_record(cfg: RunConfig) -> dict:
    """``config.json``: the run's config, without how this invocation started it (``train.resume``,
    ``train.overwrite``), so that it reads back as the run's own recipe."""
    tree = to_dict(cfg)
    tree["train"].update(resume=None, overwrite=False)
    return tree


def _saved_run(out: Path) -> RunConfig | None:
    """The run a folder's ``config.json`` describes (None without one), read as data."""
    file = out / CONFIG_FILE
    if not file.exists():
        return None
    try:
        cfg = from_dict(RunConfig, json.loads(file.read_text()))
        validate(cfg)
    except (ValueError, TypeError) as e:
        raise RunFolderError(f"{file}: unreadable run config ({' '.join(str(e).split())}); move it away, "
                             "or start over with train.overwrite=true") from None
    return cfg


def prepare(out: Path, cfg: RunConfig, resume: ResumePoint | None, log: Callable[[str], None]) -> None:
    """Rank 0, holding the lock: apply the folder rules for ``cfg`` continuing ``resume`` (None:
    starting afresh). Makes sure ``out/checkpoints`` can be written."""
    ckpts = out / "checkpoints"
    if cfg.train.overwrite and cfg.train.resume is not None:
        raise ConfigError(f"train.overwrite=true starts afresh; train.resume={cfg.train.resume} continues: give one")
    existing = checkpoint.step_folders(ckpts)
    if cfg.train.overwrite and (existing or (out / "results.jsonl").exists() or (out / CONFIG_FILE).exists()):
        log(f"train.overwrite=true: deleting the previous run's checkpoints and logs in {out}")
        for name in ("checkpoints", "tb"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("results.jsonl", CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
        existing = []
    if resume is None and existing:
        raise RunFolderError(
            f"{out} holds another run's checkpoints (newest: {existing[0].name}): continue it with "
            "train.resume=latest or auto, start over with train.overwrite=true, or choose another train.output_dir"
        )
    if resume is None and (saved := _saved_run(out)) is not None:
        changed = [change_text(*c) for c in other_run(saved, cfg)]
        if changed:
            raise RunFolderError(
                f"{out} holds another run's {CONFIG_FILE} and no checkpoint ({'; '.join(changed[:3])}): start over "
                "with train.overwrite=true, or choose another train.output_dir")
        log(f"{out} holds this run's {CONFIG_FILE} but no checkpoint: starting it from step 0")
    removed = checkpoint.remove_temporaries(ckpts)
    if removed:
        log(f"removed half-written checkpoints of an earlier run that died: {', '.join(removed)}")
    _check_writable(ckpts)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{checkpoint.TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"checkpoints cannot be written to {folder}: {e.strerror or e}") from None

"""A run folder belongs to one run.

- **A lock** (``.lock``: PID, host, start time) stops two live runs from writing into one
  folder. Rank 0 holds it while the run lives and refreshes it every ``HEARTBEAT_S``; a lock
  whose process is gone (same host), or that has not been refreshed for ``STALE_AFTER_S``
  (another host), was left by a crash and is removed.
- **One run's checkpoints**: a new run (``train.resume`` unset) into a folder holding
  checkpoints stops with an error, unless ``train.overwrite`` deletes them first.
  ``train.resume=auto`` continues them only if they are this run's (the same settings, up to
  how it executes); ``latest`` continues them whatever they are.
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
from ..config import ConfigError, RunConfig
from .resume import change_text, changes, is_execution

LOCK_FILE = ".lock"
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


def differences(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """The settings (as ``key: saved -> now``) in which ``cfg`` is another run than ``saved``:
    anything but where and how it executes (``resume.is_execution``)."""
    return [change_text(*c) for c in changes(saved, cfg) if not is_execution(c[0])]


def prepare(out: Path, cfg: RunConfig, log: Callable[[str], None]) -> Path | None:
    """Rank 0, holding the lock: apply the folder rules and return the step folder to resume
    from (None: start afresh). Makes sure ``out/checkpoints`` can be written."""
    ckpts = out / "checkpoints"
    resume, overwrite = cfg.train.resume, cfg.train.overwrite
    if overwrite and resume is not None:
        raise ConfigError(f"train.overwrite=true starts afresh; train.resume={resume} continues: give one")
    existing = checkpoint.step_folders(ckpts)
    if overwrite and (existing or (out / "results.jsonl").exists()):
        log(f"train.overwrite=true: deleting the previous run's checkpoints and logs in {out}")
        for name in ("checkpoints", "tb"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("results.jsonl", "config.json"):
            (out / name).unlink(missing_ok=True)
        existing = []
    if resume is None and existing:
        raise RunFolderError(
            f"{out} holds another run's checkpoints (newest: {existing[0].name}): continue it with "
            "train.resume=latest or auto, start over with train.overwrite=true, or choose another train.output_dir"
        )
    removed = checkpoint.remove_temporaries(ckpts)
    if removed:
        log(f"removed half-written checkpoints of an earlier run that died: {', '.join(removed)}")
    _check_writable(ckpts)
    path = checkpoint.resume_from(resume, ckpts, log)
    if resume == "auto" and path is not None:
        changed = differences(checkpoint.run_config(checkpoint.resolve(path)), cfg)
        if changed:
            raise RunFolderError(
                f"train.resume=auto: {out} holds the checkpoints of another run ({'; '.join(changed[:3])}); "
                "continue them anyway with train.resume=latest, or start over with train.overwrite=true"
            )
    return path


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{checkpoint.TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"checkpoints cannot be written to {folder}: {e.strerror or e}") from None

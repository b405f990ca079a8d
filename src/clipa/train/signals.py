"""Stopping on request: SIGTERM (SLURM, Kubernetes, ``kill``), SIGINT (Ctrl-C) and SIGUSR1
(SLURM's ``--signal=USR1@90``) let the current step finish; the trainer then writes a
checkpoint on every rank, says where it is and stops with ``TrainingStopped``, which the CLI
turns into exit status 128 + the signal's number (143, 130, 138: as if killed by it, and not
0, 1 or 2, so a job script can tell "stopped, resume me" from "done" and from "failed").

A second signal stops the process at once, without saving. A repeat within
``REPEAT_WINDOW_S`` seconds is the same request delivered twice and is ignored: SLURM signals
every process of a job step and torchrun forwards the signal it got to its workers again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_WINDOW_S = 2.0


class TrainingStopped(Exception):
    """Training stopped on a signal after saving ``checkpoint`` (None: nothing to save yet)."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum, self.checkpoint = signum, checkpoint
        where = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"stopped by {signal.Signals(signum).name}: {where}; "
                         "run the same command with train.resume=auto (or latest) to continue")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopRequests:
    """While entered, the stop signals set ``signum`` instead of killing the process.

    Signal handlers can only be installed from the main thread; elsewhere (a training run
    inside a worker thread) the process's own handling stays as it was.
    """

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.announce = announce
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
            # os.write: print() from a handler can re-enter a write the main thread is inside
            self._say(f"{name} received: finishing this step, then saving a checkpoint "
                      f"(send it again to stop at once, without saving)")
        elif now - self._first_at >= REPEAT_WINDOW_S:
            self._say(f"second {name}: stopping now, without saving")
            os._exit(128 + signum)

    def _say(self, message: str) -> None:
        if self.announce:
            os.write(2, f"clipa: {message}\n".encode())

"""Fault injection: random kills, signals and full disks against a short run, restarted until done.

A two-stage tiny-CLIP run on the built-in digits (checkpoints every 3 steps, the newest two
kept, ``train.resume=auto``) is first run once without faults: the reference. Each trial then
runs the same command in a fresh folder and, at a random moment, does one of:

- ``kill``: SIGKILL (a crash, an out-of-memory kill, a lost node);
- ``sigterm`` / ``sigint`` / ``sigusr1``: what SLURM (``--signal``), Ctrl-C or a scheduler sends;
  clipa should finish the step, save, say where and exit;
- ``double-sigint``: a second Ctrl-C three seconds later, which should stop it at once;
- ``disk-full``: the run folder (its own small tmpfs, so root is needed; skipped otherwise) is
  filled to the last byte; clipa should stop with an error and leave its checkpoints intact.
  The space is freed before the restart.

then reruns the command (as ``torchrun --max-restarts`` or a SLURM requeue would) until it exits
with status 0, with one or two faults per trial. A trial counts when its final weights equal the
reference bit for bit. Runs that hang past a limit are killed and counted as failures.

    python benchmarks/faults.py [--trials 10] [--seed 0] [--workdir DIR] [--keep]

Last line: the fraction of trials that finished bit-identical to the reference (goal 1.0).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

RUN = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "stages=[{name: small, samples: 384, batch_size: 32, warmup: 2, text_length: 8},"
    " {name: large, image_size: 24, samples: 192, batch_size: 32, warmup: 1, text_length: 8}]",
    "train.progress=false", "train.threads=1", "train.device=cpu", "train.checkpoint_every=3",
    "train.keep_last=2", "train.resume=auto",
]
KINDS = ["kill", "sigterm", "sigint", "sigusr1", "double-sigint", "disk-full"]
SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigusr1": signal.SIGUSR1,
           "double-sigint": signal.SIGINT}
MAX_RUNS = 6  # starts per trial before it counts as never finishing


def start(out: Path, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "clipa", "train", *RUN, f"train.output_dir={out}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def final_weights(out: Path) -> dict[str, torch.Tensor] | None:
    steps = sorted((out / "checkpoints").glob("step_*"))
    return load_file(str(steps[-1] / "model.safetensors")) if steps else None


def identical(a: dict | None, b: dict | None) -> bool:
    return a is not None and b is not None and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Disk:
    """A run folder on its own small tmpfs, which ``fill`` fills to the last byte."""

    def __init__(self, folder: Path, size_mb: int = 512):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                                      capture_output=True).returncode == 0

    def fill(self) -> None:
        chunk = b"\0" * (1 << 20)
        with open(self.folder / "ballast", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError:  # ENOSPC: now the bytes that fit, one at a time
                try:
                    while True:
                        f.write(b"\0")
                except OSError:
                    pass

    def free(self) -> None:
        (self.folder / "ballast").unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


def inject(kind: str, proc: subprocess.Popen, disk: Disk) -> None:
    if kind == "kill":
        os.killpg(proc.pid, signal.SIGKILL)
    elif kind == "disk-full":
        disk.fill()
    else:
        proc.send_signal(SIGNALS[kind])
        if kind == "double-sigint":
            time.sleep(3)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)


def trial(i: int, root: Path, reference: dict, duration: float, rng: random.Random) -> tuple[bool, str]:
    out = root / f"trial_{i:02d}"
    disk = Disk(out)
    kinds = [k for k in KINDS if k != "disk-full" or disk.mounted]
    faults = [rng.choice(kinds) for _ in range(rng.choice([1, 2]))]
    events = []
    try:
        with open(root / f"trial_{i:02d}.log", "ab") as log:
            for run in range(MAX_RUNS):
                proc = start(out, log)
                if faults:
                    kind = faults.pop(0)
                    time.sleep(rng.uniform(0.3, 1.0) * duration)
                    if proc.poll() is None:
                        inject(kind, proc, disk)
                        events.append(kind)
                    else:
                        events.append(f"{kind}(too late)")
                try:
                    rc = proc.wait(timeout=4 * duration + 60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    events.append("HUNG")
                    rc = None
                disk.free()
                events.append(f"rc={rc}")
                if rc == 0:
                    break
        same = identical(final_weights(out), reference)
        left = sorted(p.name for p in (out / "checkpoints").glob(".tmp*")) if (out / "checkpoints").is_dir() else []
        note = f" (left behind: {', '.join(left)})" if left else ""
        return same, " ".join(events) + note
    finally:
        disk.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    p.add_argument("--keep", action="store_true", help="keep the run folders and logs")
    args = p.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="clipa-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        with open(root / "reference.log", "wb") as log:
            rc = start(root / "reference", log).wait()
        duration = time.perf_counter() - t0
        reference = final_weights(root / "reference")
        if rc != 0 or reference is None:
            sys.exit(f"the reference run failed (status {rc}); see {root / 'reference.log'}")
        print(f"reference run: {duration:.1f} s", flush=True)
        rng = random.Random(args.seed)
        good = 0
        for i in range(args.trials):
            same, events = trial(i, root, reference, duration, rng)
            good += same
            print(f"trial {i}: {'identical' if same else 'DIFFERENT'}: {events}", flush=True)
        print(f"{good} of {args.trials} faulted runs finished bit-identical to the uninterrupted run")
        print(f"{good / args.trials:.2f}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

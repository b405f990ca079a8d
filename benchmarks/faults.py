"""Fault injection: random faults against a running run, and adversarial files and inputs.

**Random half.** Kills, signals and full disks against a short run, restarted until done.

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

**Adversarial half.** Every file and input clipa should not trust (issue 25), each given to a
fresh ``python -m clipa`` process as a user would: saved configs that would run a command,
resumes with nothing intact, damaged and unverified checkpoints, absurd model sizes, pickles,
stray keys, oversized headers, bad JSON, an image as a data source, impossible stage values and
a rank stopped mid-step. A case counts as handled when clipa refused it in one ``clipa:
error:`` line saying what it should (before any work, nothing changed on disk, no command run),
or survived it with nothing lost.

    python benchmarks/faults.py [--half random|adversarial|both] [--trials 10] [--seed 0] [--workdir DIR] [--keep]

Last line: the fraction of all cases handled (goal 1.00): bit-identical trials and handled
adversarial cases over their total.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared adversarial helpers
from conftest import image_bytes, openclip_folder, stop_rank_one_mid_step, write_samples  # noqa: E402

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


# ----------------------------------------------------------------------------- the adversarial half

TINY = RUN[:1] + ["train.progress=false", "train.threads=1", "train.device=cpu", "stage.batch_size=32",
                  "stage.warmup=1"]


def clipa(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m clipa ARGS`` as a user runs it (stdin closed, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "clipa", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def refused(proc: subprocess.CompletedProcess, *says: str) -> str | None:
    """None when clipa refused in one line saying each of ``says``, else what went wrong."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("clipa: error:")]
    if proc.returncode != 2 or len(errors) != 1 or "Traceback" in proc.stderr:
        return f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    missing = [s for s in says if s not in errors[0]]
    return f"the line lacks {missing}: {errors[0][:300]}" if missing else None


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} \
        if folder.exists() else {}


@dataclass
class Case:
    name: str
    check: Callable[[Path, Path], str | None]  # (work folder, a finished run to copy) -> None when handled


def _copy(run: Path, work: Path) -> Path:
    shutil.copytree(run, work / "run")
    return work / "run"


def _edit_state(step: Path, edit: Callable[[dict], None]) -> None:
    from clipa.checksums import write_checksums

    state = json.loads((step / "state.json").read_text())
    edit(state)
    (step / "state.json").write_text(json.dumps(state))
    write_checksums(step)  # an attacker rewrites the record too


def saved_pipe_source(work: Path, run: Path) -> str | None:
    step = _copy(run, work) / "checkpoints" / "step_00000002"
    marker = work / "ran"
    _edit_state(step, lambda s: s["config"]["data"].update(source=f"pipe:touch {marker}; cat x.tar"))
    why = refused(clipa("train", f"train.resume={step}", f"train.output_dir={work / 'new'}"), "data.source",
                  "comes only from the saved config")
    return why or ("the command ran" if marker.exists() else None) or ("a folder was made" if (work / "new").exists()
                                                                     else None)


def saved_pipe_eval_data(work: Path, run: Path) -> str | None:
    step = _copy(run, work) / "checkpoints" / "step_00000002"
    marker = work / "ran"
    _edit_state(step, lambda s: s["config"]["eval"].update(data=f"pipe:touch {marker}"))
    return refused(clipa("eval", str(step), "--no-progress"), "give it with --data") or \
        ("the command ran" if marker.exists() else None)


def _latest_on(folder: Path, *says: str) -> str | None:
    before = tree(folder)
    why = refused(clipa("train", "train.resume=latest", f"train.output_dir={folder}"), *says)
    return why or (None if tree(folder) == before else "the folder changed")


def latest_all_damaged(work: Path, run: Path) -> str | None:
    copied = _copy(run, work)
    for step in (copied / "checkpoints").iterdir():
        (step / "model.safetensors").write_bytes((step / "model.safetensors").read_bytes()[:100])
    return _latest_on(copied, "no intact checkpoint", "Nothing was trained", "train.overwrite=true")


def latest_before_first_checkpoint(work: Path, run: Path) -> str | None:
    copied = _copy(run, work)
    shutil.rmtree(copied / "checkpoints")
    return _latest_on(copied, "no intact checkpoint", "config.json")


def latest_typo(work: Path, run: Path) -> str | None:
    return _latest_on(work / "rnu", "does not exist") or ("made the folder" if (work / "rnu").exists() else None)


def newest_without_state(work: Path, run: Path) -> str | None:
    copied = _copy(run, work)
    (copied / "checkpoints" / "step_00000002" / "state.json").unlink()
    proc = clipa("export", str(copied), "-o", str(work / "exported"))
    if proc.returncode != 0 or "skipping damaged checkpoint step_00000002" not in proc.stderr:
        return f"export did not name it: exit {proc.returncode} {proc.stderr[-300:]}"
    proc = clipa("train", *TINY, "stage.samples=96", "train.resume=latest", f"train.output_dir={copied}")
    return None if proc.returncode == 0 and "skipping damaged checkpoint step_00000002" in proc.stdout else \
        f"resume: exit {proc.returncode} {proc.stdout[-300:]} {proc.stderr[-300:]}"


def unverified(work: Path, run: Path) -> str | None:
    from safetensors.torch import load_file, save_file

    step = _copy(run, work) / "checkpoints" / "step_00000002"
    (step / "checksums.json").unlink()
    weights = load_file(str(step / "model.safetensors"))
    weights["visual.proj"][0, 0] += 1.0
    save_file(weights, str(step / "model.safetensors"))
    proc = clipa("export", str(step), "-o", str(work / "exported"))
    if proc.returncode != 0 or "unverified" not in proc.stderr:
        return f"export did not report it unverified: {proc.stderr[-300:]}"
    return refused(clipa("train", f"train.resume={step}", f"train.output_dir={work / 'new'}"),
                   "train.resume_unverified=true")


def deep_local_dir(work: Path, run: Path) -> str | None:
    folder = openclip_folder(work / "odd", layers=10_000_000)
    return refused(clipa("eval", f"local-dir:{folder}", "--no-progress", timeout=120), "model.vision.layers",
                   "parameters")


def _absurd(override: str, says: str) -> Callable[[Path, Path], str | None]:
    def case(work: Path, run: Path) -> str | None:
        return refused(clipa("train", f"model_overrides={{{override}}}", f"train.output_dir={work / 'run'}",
                             timeout=120), says) or ("a folder was made" if (work / "run").exists() else None)
    return case


def pickled_weights(work: Path, run: Path) -> str | None:
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {work / 'ran'}",)

    (work / "evil.pt").write_bytes(pickle.dumps({"state_dict": RunsCode()}))
    why = refused(clipa("eval", str(work / "evil.pt"), "--model", "clipa-tiny", "--no-progress"), "refused")
    return why or ("the pickle ran" if (work / "ran").exists() else None)


def stray_key(work: Path, run: Path) -> str | None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    sd["stray.weight"] = sd["logit_scale"].clone()
    save_file(sd, str(work / "w.safetensors"))
    return refused(clipa("export", str(work / "w.safetensors"), "--model", "clipa-tiny", "-o", str(work / "e")),
                   "1 unexpected keys (stray.weight)")


def huge_header(work: Path, run: Path) -> str | None:
    (work / "w.safetensors").write_bytes(struct.pack("<Q", 90 * 10**6) + b"{" + b" " * 4096)
    t0 = time.perf_counter()
    why = refused(clipa("eval", str(work / "w.safetensors"), "--model", "clipa-tiny", "--no-progress"), "header")
    return why or (None if time.perf_counter() - t0 < 60 else "it took over a minute")


def bad_json(work: Path, run: Path) -> str | None:
    folder = openclip_folder(work / "odd")
    (folder / "open_clip_config.json").write_text("{not json")
    return refused(clipa("eval", str(folder), "--no-progress"), str(folder / "open_clip_config.json"))


def _photo(work: Path) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "JPEG")
    (work / "photo.jpg").write_bytes(buf.getvalue())
    return work / "photo.jpg"


def image_as_source(work: Path, run: Path) -> str | None:
    why = refused(clipa("train", *TINY, f"data.source={_photo(work)}", f"train.output_dir={work / 'run'}"),
                  "is an image, not a data source")
    return why or ("a folder was left" if (work / "run").exists() else None)


def image_converted(work: Path, run: Path) -> str | None:
    return refused(clipa("data", "convert", str(_photo(work)), "-o", str(work / "shards")), "not a data source")


def batch_above_data(work: Path, run: Path) -> str | None:
    write_samples(work / "small.tar", [(f"s{i}", {"jpg": image_bytes(i), "txt": b"a photo"}) for i in range(10)])
    why = refused(clipa("train", *TINY, f"data.source={work / 'small.tar'}", "data.workers=1",
                        f"train.output_dir={work / 'run'}"), "no complete batch of 32", "read 10 sample",
                  "lower stage.batch_size")
    return why or ("a folder was left" if (work / "run").exists() else None)


def _stage(override: str, says: str) -> Callable[[Path, Path], str | None]:
    def case(work: Path, run: Path) -> str | None:
        why = refused(clipa("train", "train.progress=false", override, f"train.output_dir={work / 'run'}"), says)
        return why or ("the run folder was touched" if (work / "run").exists() else None)
    return case


def samples_below_batch(work: Path, run: Path) -> str | None:
    proc = clipa("train", *TINY, "stage.samples=10", f"train.output_dir={work / 'run'}")
    said = "samples=10 is less than one batch of 32; it trains one step of 32 samples"
    return None if proc.returncode == 0 and said in proc.stderr else f"exit {proc.returncode}: {proc.stderr[-300:]}"


def yaml_python_tag(work: Path, run: Path) -> str | None:
    recipe = work / "evil.yaml"
    recipe.write_text(f"train: !!python/object/apply:os.system ['touch {work / 'ran'}']\n")
    why = refused(clipa("train", str(recipe)), "not valid YAML")
    return why or ("the tag ran" if (work / "ran").exists() else None)


def stalled_rank(work: Path, run: Path) -> str | None:
    """torchrun with two CPU ranks; rank 1 stopped (SIGSTOP) once steps run."""
    text = stop_rank_one_mid_step(work, TINY[:1] + ["train.progress=false", "train.threads=1"])
    errors = [line for line in text.splitlines() if line.startswith("clipa: error:")]
    return None if errors and "rank(s) 1 did not arrive" in errors[0] else f"said: {errors or text[-300:]}"


CASES = [
    Case("a saved config's pipe: data source", saved_pipe_source),
    Case("a saved config's pipe: eval.data", saved_pipe_eval_data),
    Case("resume=latest, every checkpoint damaged", latest_all_damaged),
    Case("resume=latest, stopped before its first checkpoint", latest_before_first_checkpoint),
    Case("resume=latest, a typo in the folder", latest_typo),
    Case("the newest checkpoint without state.json", newest_without_state),
    Case("no checksums.json and a changed value", unverified),
    Case("layers 10,000,000 in a local-dir config", deep_local_dir),
    Case("vision width 1e9", _absurd("vision: {width: 1000000000}", "model.vision.layers")),
    Case("vocab 1e12", _absurd("text: {vocab_size: 1000000000000}", "model.text.vocab_size")),
    Case("image size 1e6", _absurd("vision: {image_size: 1000000}", "model.vision.image_size")),
    Case("context 1e9", _absurd("text: {context_length: 1000000000}", "model.text.context_length")),
    Case("a negative embed_dim", _absurd("embed_dim: -4", "model.embed_dim")),
    Case("patch size 0", _absurd("vision: {patch_size: 0}", "model.vision.patch_size")),
    Case("a pickle that runs code", pickled_weights),
    Case("one unexpected key", stray_key),
    Case("a 90 MB safetensors header", huge_header),
    Case("bad JSON in open_clip_config.json", bad_json),
    Case("an image as data.source", image_as_source),
    Case("an image to data convert", image_converted),
    Case("a batch larger than the data", batch_above_data),
    Case("image size 30 with patch 4", _stage("stage.image_size=30", "not a positive multiple of the patch size")),
    Case("image size 3 with patch 4", _stage("stage.image_size=3", "nearest: 4 px")),
    Case("min_lr above lr", _stage("stage.min_lr=0.1", "above the stage's peak learning rate")),
    Case("samples below one batch", samples_below_batch),
    Case("a YAML python tag", yaml_python_tag),
    Case("a rank stopped mid-step", stalled_rank),
]


def adversarial(root: Path) -> tuple[int, int]:
    """Run every case in its own folder; (handled, total)."""
    run = root / "finished"
    proc = clipa("train", *TINY, "stage.samples=64", "train.checkpoint_every=1", f"train.output_dir={run}")
    if proc.returncode != 0:
        sys.exit(f"the run the cases copy failed: {proc.stderr[-1000:]}")
    handled = 0
    for i, case in enumerate(CASES):
        work = root / f"case_{i:02d}"
        work.mkdir()
        t0 = time.perf_counter()
        try:
            why = case.check(work, run)
        except Exception as e:  # a case that crashed the check is not handled
            why = f"{type(e).__name__}: {e}"
        handled += why is None
        print(f"{'handled' if why is None else 'NOT HANDLED'}: {case.name} ({time.perf_counter() - t0:.0f} s)"
              + (f": {why}" if why else ""), flush=True)
    return handled, len(CASES)


def random_half(root: Path, trials: int, seed: int) -> tuple[int, int]:
    """The kills, signals and full disks; (bit-identical trials, trials)."""
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(root / "reference.log", "wb") as log:
        rc = start(root / "reference", log).wait()
    duration = time.perf_counter() - t0
    reference = final_weights(root / "reference")
    if rc != 0 or reference is None:
        sys.exit(f"the reference run failed (status {rc}); see {root / 'reference.log'}")
    print(f"reference run: {duration:.1f} s", flush=True)
    rng = random.Random(seed)
    good = 0
    for i in range(trials):
        same, events = trial(i, root, reference, duration, rng)
        good += same
        print(f"trial {i}: {'identical' if same else 'DIFFERENT'}: {events}", flush=True)
    print(f"{good} of {trials} faulted runs finished bit-identical to the uninterrupted run", flush=True)
    return good, trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--half", choices=("random", "adversarial", "both"), default="both")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    p.add_argument("--keep", action="store_true", help="keep the run folders and logs")
    args = p.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="clipa-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        handled = total = 0
        if args.half in ("random", "both"):
            good, n = random_half(root / "random", args.trials, args.seed)
            handled, total = handled + good, total + n
        if args.half in ("adversarial", "both"):
            (root / "adversarial").mkdir(exist_ok=True)
            good, n = adversarial(root / "adversarial")
            print(f"{good} of {n} adversarial cases handled", flush=True)
            handled, total = handled + good, total + n
        print(f"{handled} of {total} cases handled (refused in one line, or survived with nothing lost)")
        print(f"{handled / total:.2f}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

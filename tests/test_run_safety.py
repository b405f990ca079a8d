"""Runs that survive preemption and mistakes (issue 14), on a tiny CLIP on the digits.

Reference for every interrupted run: the same config trained straight through in one go;
"identical" means bitwise (rtol = atol = 0), as a resume replays the same steps in the same
order on the same machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipa import checkpoint, load_model
from clipa.checksums import ChecksumError, write_checksums
from clipa.cli import main
from clipa.config import ConfigError, load_config
from clipa.train import run_folder
from clipa.train.run_folder import RunFolderError
from clipa.train.signals import TrainingStopped
from clipa.train.trainer import NonFiniteLossError, Trainer
from test_data import good_shards

TINY = [
    "model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, head_width: 32},"
    " text: {width: 64, heads: 2, layers: 1}}",
    "train.progress=false", "train.threads=1", "stage.text_length=8", "stage.warmup=1",
]
# two stages (5 + 2 steps), the second at another image size
TWO_STAGES = ("stages=[{name: a, samples: 160, batch_size: 32, warmup: 1, text_length: 8},"
              " {name: b, image_size: 24, samples: 64, batch_size: 32, warmup: 1, text_length: 8}]")


def cfg(out, *extra):
    return load_config(None, TINY + [f"train.output_dir={out}", *extra])


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def signal_at(trainer: Trainer, monkeypatch, call: int, signum: int = signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process just before the trainer's ``call``-th stop check
    (one per step, one after each stage-end save)."""
    original, calls = trainer._stop_signal, {"n": 0}

    def stop_signal():
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original()

    monkeypatch.setattr(trainer, "_stop_signal", stop_signal)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    Trainer(cfg(out, TWO_STAGES)).fit()
    return final_weights(out), (out / "results.jsonl").read_text()


@pytest.mark.parametrize("call, saved, signum", [
    (3, "step_00000003", signal.SIGTERM),  # mid-stage, with checkpoint_every=0
    (5, "step_00000005", signal.SIGINT),  # the last step: the stage-end checkpoint, not yet evaluated
    (6, "step_00000005", signal.SIGUSR1),  # during the stage-end save
])
def test_a_signal_saves_and_resume_is_bit_identical(tmp_path, monkeypatch, reference, call, saved, signum):
    trainer = Trainer(cfg(tmp_path, TWO_STAGES, "train.resume=auto"))
    signal_at(trainer, monkeypatch, call, signum)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    assert stopped.value.checkpoint == tmp_path / "checkpoints" / saved
    assert stopped.value.exit_status == 128 + signum
    assert [p.name for p in checkpoint.step_folders(tmp_path / "checkpoints")] == [saved]
    assert signal.getsignal(signum) is not trainer.stop._handle  # handlers restored

    Trainer(cfg(tmp_path, TWO_STAGES, "train.resume=auto")).fit()
    weights, results = reference
    assert_identical(final_weights(tmp_path), weights)
    assert (tmp_path / "results.jsonl").read_text() == results  # the missed stage-end evaluation is made


def test_a_stopped_run_lets_its_loader_workers_go(tmp_path, monkeypatch):
    """The stop's traceback (kept here by pytest.raises) holds the stage's frame; the loader's
    persistent workers must not live on with it."""
    (tmp_path / "data").mkdir()
    source = good_shards(tmp_path / "data", 2, 40)
    trainer = Trainer(cfg(tmp_path / "run", f"data.source={source}", "data.workers=1", "data.persistent_workers=true",
                          "stages=[{samples: 320, batch_size: 8, warmup: 1, text_length: 8}]"))
    signal_at(trainer, monkeypatch, 3)
    before = set(multiprocessing.active_children())
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    assert stopped.value.checkpoint is not None
    assert set(multiprocessing.active_children()) <= before  # the worker has been joined


def test_a_second_signal_stops_at_once_and_a_repeat_is_ignored(tmp_path):
    script = textwrap.dedent("""
        import os, signal, time
        from clipa.train import signals
        with signals.StopRequests() as s:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # within the window: the same request twice
            print("still here", s.signum, flush=True)
            signals.REPEAT_WINDOW_S = 0.0
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            print("not reached", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert proc.stdout.splitlines() == [f"still here {int(signal.SIGINT)}"]
    assert "second SIGINT: stopping now" in proc.stderr


# ----------------------------------------------------------------------------- the run folder


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    Trainer(cfg(tmp_path, "stage.samples=64", "stage.batch_size=32")).fit()
    before = final_weights(tmp_path)
    with pytest.raises(RunFolderError, match=r"holds another run's checkpoints \(newest: step_00000002\)"):
        Trainer(cfg(tmp_path, "stage.samples=96", "stage.batch_size=32")).fit()
    assert_identical(final_weights(tmp_path), before)  # untouched
    # resume=auto and latest share one same-run rule: another batch size is another run
    for setting in ("auto", "latest"):
        with pytest.raises(ConfigError, match=r"train.resume: stages.0.batch_size is 32 in the run being resumed"):
            Trainer(cfg(tmp_path, "stage.samples=96", "stage.batch_size=16", f"train.resume={setting}")).fit()
    assert_identical(final_weights(tmp_path), before)
    assert main(["train", *TINY, f"train.output_dir={tmp_path}", "stage.samples=96", "stage.batch_size=32"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    Trainer(cfg(tmp_path, "stage.samples=96", "stage.batch_size=32", "train.overwrite=true")).fit()
    assert [p.name for p in checkpoint.step_folders(tmp_path / "checkpoints")] == ["step_00000003"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1


def test_the_lock_stops_a_live_run_and_is_cleared_after_a_crash(tmp_path):
    lock = tmp_path / run_folder.LOCK_FILE
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "earlier"}))
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {sleeper.pid} on"):
            with run_folder.locked(tmp_path, print):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    messages = []
    with run_folder.locked(tmp_path, messages.append):  # the holder is dead now: a crash
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "ended without releasing it" in messages[0]
    assert not lock.exists()


def test_stale_temporaries_are_removed_and_keep_last_retains_the_newest(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step_00000004-99999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    Trainer(cfg(tmp_path, "stage.samples=192", "stage.batch_size=32", "train.checkpoint_every=1",
                "train.keep_last=2", "train.resume=auto")).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005", "step_00000006"]


def test_problems_found_before_the_first_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="no retrieval shards at"):
        Trainer(cfg(tmp_path, "eval.data=/nonexistent/eval", "train.checkpoint_every=1")).fit()
    assert checkpoint.step_folders(tmp_path / "checkpoints") == []
    with pytest.raises(ValueError, match=r"stages.1.batch_size=1500 is larger than the 1438 training samples of data.source=digits"):
        Trainer(cfg(tmp_path, TWO_STAGES, "stages.1.batch_size=1500", "stages.1.samples=3000")).fit()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises((RunFolderError, OSError)):
        Trainer(cfg(blocked / "run")).fit()


def test_a_full_disk_stops_the_run_cleanly_and_resume_is_identical(tmp_path, monkeypatch, capsys):
    """ENOSPC while the third checkpoint is written: one line naming it, nothing half-written
    left, the earlier checkpoints intact, and the rerun finishes as if nothing happened."""
    import errno

    args = ["stage.samples=192", "stage.batch_size=32", "train.checkpoint_every=1", "train.resume=auto"]
    Trainer(cfg(tmp_path / "straight", *args)).fit()
    real_save, calls = checkpoint.save_tensors, {"n": 0}

    def save_file_on_a_full_disk(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3 * 3:  # model, optimizer, rng per checkpoint: the third checkpoint's rng
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(checkpoint, "save_tensors", save_file_on_a_full_disk)
    run = ["train", *TINY, f"train.output_dir={tmp_path / 'run'}", *args]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipa: error: [Errno {errno.ENOSPC}] could not write checkpoint ")
    assert "step_00000003 (No space left on device)" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    monkeypatch.setattr(checkpoint, "save_tensors", real_save)
    assert main(run) == 0
    assert_identical(final_weights(tmp_path / "run"), final_weights(tmp_path / "straight"))


# ----------------------------------------------------------------------------- damaged and non-finite checkpoints


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    args = ["stage.samples=192", "stage.batch_size=32", "train.checkpoint_every=2"]
    Trainer(cfg(tmp_path / "straight", *args)).fit()
    run = tmp_path / "run"
    Trainer(cfg(run, *args)).fit()
    latest = run / "checkpoints" / "step_00000006"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(ChecksumError, match=rf"{weights}: 1000 bytes"):
        load_model(latest)
    assert main(["export", str(latest), "--output", str(tmp_path / "exported")]) == 2
    assert str(weights) in capsys.readouterr().err

    Trainer(cfg(run, *args, "train.resume=latest")).fit()
    assert "skipping damaged checkpoint step_00000006" in capsys.readouterr().out
    assert_identical(final_weights(run), final_weights(tmp_path / "straight"))


def assert_all_checkpoints_finite(folder) -> None:
    for step in checkpoint.step_folders(folder):
        for name, t in load_file(str(step / "model.safetensors")).items():
            assert torch.isfinite(t).all(), f"{step.name}: {name}"


def test_a_huge_learning_rate_never_writes_a_non_finite_checkpoint(tmp_path):
    trainer = Trainer(cfg(tmp_path, "stage.samples=256", "stage.batch_size=32", "stage.lr=1e4",
                          "train.checkpoint_every=1", "train.max_bad_steps=100"))
    trainer.fit()
    assert_all_checkpoints_finite(tmp_path / "checkpoints")


def test_weights_made_non_finite_by_a_step_are_never_saved(tmp_path, monkeypatch, capsys):
    """A step whose loss was finite but whose update was not (what a huge learning rate does
    to a bigger model): from then on no checkpoint is written."""
    trainer = Trainer(cfg(tmp_path, "stage.samples=256", "stage.batch_size=32",
                          "train.checkpoint_every=1", "train.max_bad_steps=3"))
    original = trainer._report

    def report(progress, plan, step, *args):
        original(progress, plan, step, *args)
        if step == 2:
            with torch.no_grad():
                trainer.model.visual.proj[0, 0] = float("nan")

    monkeypatch.setattr(trainer, "_report", report)
    with pytest.raises(NonFiniteLossError, match="step 3: the weights are no longer finite"):
        trainer.fit()  # the step's counters see them before the save; nothing is written
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    assert_all_checkpoints_finite(tmp_path / "checkpoints")


def test_loading_non_finite_weights_fails_clearly(tmp_path, capsys):
    Trainer(cfg(tmp_path, "stage.samples=64", "stage.batch_size=32")).fit()
    step = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    sd = load_file(str(step / "model.safetensors"))
    sd["visual.proj"][0, 0] = float("nan")
    save_file(sd, str(step / "model.safetensors"))
    write_checksums(step)  # the file is intact, its contents are not
    with pytest.raises(checkpoint.NonFiniteWeightsError, match=r"non-finite weights \(NaN or infinity in visual.proj"):
        load_model(step)
    assert main(["export", str(step), "--output", str(tmp_path / "exported")]) == 2
    assert "non-finite weights" in capsys.readouterr().err
    with pytest.raises(checkpoint.NonFiniteWeightsError):
        Trainer(cfg(tmp_path, "stage.samples=64", "stage.batch_size=32", "train.resume=latest")).fit()


def test_skipped_steps_survive_resume(tmp_path):
    args = ["stage.samples=128", "stage.batch_size=32", "train.checkpoint_every=2"]
    Trainer(cfg(tmp_path, *args)).fit()
    first = tmp_path / "checkpoints" / "step_00000002"
    state = json.loads((first / "state.json").read_text())
    state["skipped_steps"] = 3
    (first / "state.json").write_text(json.dumps(state))
    write_checksums(first)
    for later in checkpoint.step_folders(tmp_path / "checkpoints")[:-1]:
        later.rename(later.with_name(".old-" + later.name))
    trainer = Trainer(cfg(tmp_path, *args, "train.resume=latest"))
    trainer.fit()
    assert trainer.skipped_steps == 3
    assert json.loads((checkpoint.latest_checkpoint(tmp_path / "checkpoints") / "state.json").read_text())[
        "skipped_steps"] == 3


def test_a_crafted_sharded_checkpoint_runs_no_code_anywhere(tmp_path, capsys):
    """eval and export (load_model), consolidate and resume all read a sharded step folder's
    index through the safe reader. No checksums.json: an attacker would rewrite it anyway."""
    import pickle

    from clipa.config import to_dict
    from clipa.safe_load import UnsafeCheckpointError

    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    step = tmp_path / "run" / "checkpoints" / "step_00000002"
    (step / "sharded").mkdir(parents=True)
    (step / "sharded" / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    resumed = cfg(tmp_path / "new", f"train.resume={step}")  # the crafted checkpoint claims to be this run
    (step / "state.json").write_text(json.dumps({"stage": 0, "stage_step": 2, "stage_done": False, "global_step": 2,
                                                 "config": to_dict(resumed)}))

    with pytest.raises(UnsafeCheckpointError, match="refused to load 'posix.system'"):
        load_model(step)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint.consolidate(step)
    assert main(["export", str(step), "--output", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipa: error: ") and err.count("\n") == 1 and "refused" in err
    # A resume refuses an unverified folder before reading it; told to trust it, the safe reader refuses.
    with pytest.raises(ConfigError, match="train.resume_unverified=true"):
        Trainer(resumed).fit()
    with pytest.raises(UnsafeCheckpointError):
        Trainer(cfg(tmp_path / "new", f"train.resume={step}", "train.resume_unverified=true")).fit()
    assert not marker.exists()


# ----------------------------------------------------------------------------- several processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_RUN = TINY + ["train.device=cpu", "train.parallel=ddp", "stage.samples=192", "stage.batch_size=32"]


def _stop_worker(rank: int, port: int, out: str, extra: list, signal_rank_1_at: int | None) -> None:
    """One rank of a 2-process gloo run; rank 1 alone gets SIGTERM at its given stop check."""
    from clipa import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(load_config(None, DDP_RUN + [f"train.output_dir={out}", *extra]))
    if rank == 1 and signal_rank_1_at is not None:
        original, calls = trainer._stop_signal, {"n": 0}

        def stop_signal():
            calls["n"] += 1
            if calls["n"] == signal_rank_1_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return original()

        trainer._stop_signal = stop_signal
    try:
        trainer.fit()
        outcome = "finished"
    except TrainingStopped as e:
        outcome = f"stopped {e.exit_status} {e.checkpoint.name}"
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(outcome)
    distributed.shutdown()


def _spawn_two(out, extra, signal_rank_1_at=None) -> list[str]:
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_stop_worker, args=(_free_port(), str(out), extra, signal_rank_1_at), nprocs=2,
                       join=True, start_method="spawn")
    return [(out / f"rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.slow
def test_sigterm_to_one_of_two_gloo_ranks_stops_both_at_one_step_and_resume_is_identical(tmp_path):
    assert _spawn_two(tmp_path / "straight", []) == ["finished", "finished"]
    stopped = _spawn_two(tmp_path / "run", ["train.resume=auto"], signal_rank_1_at=3)
    assert stopped == ["stopped 143 step_00000003"] * 2
    assert _spawn_two(tmp_path / "run", ["train.resume=auto"]) == ["finished", "finished"]
    assert_identical(final_weights(tmp_path / "run"), final_weights(tmp_path / "straight"))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat))
    return kids


def _torchrun(out, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "2",
           "--master-port", str(port), "-m", "clipa", "train", *DDP_RUN, "stage.samples=320",
           "train.checkpoint_every=2", "train.resume=auto", "train.timeout_minutes=2", f"train.output_dir={out}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO"})  # torchrun's restarts


@pytest.mark.slow
def test_torchrun_restarts_after_a_killed_worker_finish_identical(tmp_path):
    """``torchrun --max-restarts 2 ... train.resume=auto`` with a worker SIGKILLed once it has
    written 0-3 checkpoints (plus up to 2 s), 10 times: each run finishes, bit-identical to an
    uninterrupted one."""
    import random
    import time

    straight = _torchrun(tmp_path / "straight", _free_port())
    output = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, output[-3000:]
    reference = final_weights(tmp_path / "straight")
    rng = random.Random(0)
    for i in range(10):
        out, written = tmp_path / f"run{i}", rng.randrange(4)
        proc = _torchrun(out, _free_port())
        while proc.poll() is None and (not _children(proc.pid)
                                       or len(checkpoint.step_folders(out / "checkpoints")) < written):
            time.sleep(0.2)
        time.sleep(rng.uniform(0, 2))
        workers = _children(proc.pid)
        assert workers, f"try {i}: the run ended before a worker could be killed"
        os.kill(rng.choice(workers), signal.SIGKILL)
        output = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, f"try {i}: " + output[-3000:]
        assert "will restart worker group" in output, f"try {i}: no restart happened"
        assert_identical(final_weights(out), reference)


def _stall_worker(rank: int, port: int, out: str) -> None:
    import time

    from clipa import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = distributed.init_distributed("cpu", timeout_minutes=0.05)  # 3 s
    if rank == 1:
        time.sleep(10)  # stalled (a hung data read, a dead node)
    try:
        distributed.barrier(info, "a checkpoint")
        message = "passed"
    except distributed.StalledRankError as e:
        message = str(e)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(message)
    os._exit(0)  # the group is broken: leave without the teardown


@pytest.mark.slow
def test_a_stalled_rank_is_named_after_the_timeout(tmp_path):
    import time

    import torch.multiprocessing as mp

    t0 = time.monotonic()
    mp.start_processes(_stall_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    message = (tmp_path / "rank0.txt").read_text()
    assert message == ("rank 0 waited in vain for the others in a checkpoint (a rank stalled or died; "
                       "train.timeout_minutes sets the wait): rank(s) 1 did not arrive")
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
def test_a_rank_stopped_mid_step_is_named_in_one_line(tmp_path):
    """Issue 25.5: a worker stopped in the middle of training (SIGSTOP: a hung read, a frozen
    node) with train.timeout_minutes=0.25: rank 0's collective times out, a roll call names the
    missing rank, and the run ends in that one line rather than gloo's raw traceback."""
    from conftest import stop_rank_one_mid_step

    text = stop_rank_one_mid_step(tmp_path, TINY)
    errors = [line for line in text.splitlines() if line.startswith("clipa: error:")]
    assert errors == ["clipa: error: rank 0 waited in vain for the others in training (a rank stalled or died; "
                      "train.timeout_minutes sets the wait): rank(s) 1 did not arrive"], text[-3000:]
    assert "[rank0]: Traceback" not in text and "Timed out waiting" not in text


def test_ctrl_c_to_the_whole_process_group_saves_with_loader_workers(tmp_path):
    """A terminal's Ctrl-C (and SLURM's signal) reaches the loader workers too: they must
    leave it to the training process, which finishes its step and saves."""
    from conftest import write_samples
    from test_eval_data import _jpeg

    write_samples(tmp_path / "shard-0.tar", [(f"s{i}", {"jpg": _jpeg((i * 4, 0, 0)), "txt": f"a red {i} square".encode()})
                                    for i in range(64)])
    cmd = [sys.executable, "-m", "clipa", "train", *TINY, f"data.source={tmp_path / 'shard-0.tar'}",
           "data.workers=2", "data.shuffle_buffer=8", "stage.samples=3200", "stage.batch_size=16",
           f"train.output_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in proc.stdout:  # the stage has started: workers are reading
        lines.append(line)
        if line.startswith("stage 0"):
            break
    import time

    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "stopped by SIGINT: checkpoint saved in" in output, output[-3000:]
    assert output.count("SIGINT received") == 1, output[-3000:]  # the workers neither die nor announce it
    assert checkpoint.step_folders(tmp_path / "run" / "checkpoints")


# ----------------------------------------------------------------------------- one line per mistake


@pytest.mark.parametrize("case", ["yaml", "model", "csv column", "empty source", "non-finite loss", "cuda",
                                  "stage index"])
def test_every_user_error_is_one_line(tmp_path, monkeypatch, capsys, case):
    import clipa.train.step as step_mod

    run = [*TINY, f"train.output_dir={tmp_path / 'run'}", "stage.samples=64", "stage.batch_size=32"]
    (tmp_path / "broken.yaml").write_text("train:\n  seed: 1\n stages: [\n")
    (tmp_path / "pairs.csv").write_text("filepath,title\nx.png,a cat\n")
    (tmp_path / "empty").mkdir()
    tarfile_path = tmp_path / "empty" / "e-0.tar"
    tarfile.open(tarfile_path, "w").close()
    args, named = {
        "yaml": (["train", str(tmp_path / "broken.yaml")], "broken.yaml: not valid YAML"),
        "model": (["train", *run, "model=ViT-Nope"], "unknown model 'ViT-Nope'"),
        "csv column": (["train", *run, f"data.source={tmp_path / 'pairs.csv'}", "data.csv_caption_key=caption"],
                       "no column 'caption'"),
        "empty source": (["train", *run, f"data.source={tarfile_path}"], "e-0.tar' gave rank 0 no complete batch"),
        "non-finite loss": (["train", *run, "train.max_bad_steps=2"], "2 consecutive steps had a NaN"),
        "cuda": (["train", *run, "train.device=cuda"], "no CUDA device"),
        "stage index": (["train", *run, "stages.2.lr=1e-3"], "stages.2.lr: stages.2 names no item"),
    }[case]
    if case == "non-finite loss":
        monkeypatch.setattr(step_mod, "forward_backward", lambda *a, **k: torch.tensor(float("nan")))
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipa: error: ") and err.count("\n") == 1 and named in err, err

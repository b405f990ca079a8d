"""Exact resume of the training loader, and the split of samples by rank and worker.

The reference is the same loader run without interruption: a resumed loader must yield the
same keys (and, with per-sample seeded augmentation, the same pixels) from where it stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from clipa.config import DataConfig
from clipa.data import build_train_loader
from conftest import image_bytes, write_tar
from test_data import bad_data, epochs, good_shards, zero_tokens


def _run(data: DataConfig, n: int, state: dict | None = None, batch_size: int = 3, rank: int = 0,
         world_size: int = 1, every: int = 0) -> tuple[list, list[dict]]:
    """(batches, loader states after batches every, 2*every, ...) of n batches."""
    loader = build_train_loader(data, 16, batch_size, zero_tokens, seed=5, rank=rank, world_size=world_size,
                                state=state)
    batches, states = [], []
    for i, batch in enumerate(loader):
        batches.append(batch)
        if every and (i + 1) % every == 0:
            states.append(json.loads(json.dumps(loader.state_dict())))  # a checkpoint's round trip
        if i + 1 == n:
            return batches, states + [loader.stats()]
    raise AssertionError("the loader ended")


def _csv_source(root: Path) -> str:
    lines = ["filepath,title"]
    for i in range(23):
        (root / f"{i}.jpg").write_bytes(image_bytes(i) if i % 7 else b"")  # every 7th: zero bytes
        lines.append(f"{i}.jpg,caption {i}")
    (root / "t.csv").write_text("\n".join(lines) + "\n")
    return str(root / "t.csv")


@pytest.mark.parametrize("mode", ["one-pass", "num_samples", "resampled", "csv"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_process_gives_the_same_keys_and_pixels(tmp_path, mode, workers):
    source = bad_data(tmp_path)[0]
    data = {
        "one-pass": DataConfig(source=source, workers=workers, shuffle_buffer=6),
        "num_samples": DataConfig(source=source, workers=workers, shuffle_buffer=6, num_samples=20),
        "resampled": DataConfig(source=good_shards(tmp_path, 3, 4) + "::" + source, workers=workers,
                                shuffle_buffer=5, resampled=True, weights=[3.0, 1.0, 1.0, 1.0], num_samples=20),
        "csv": DataConfig(source=_csv_source(tmp_path), workers=workers, shuffle_buffer=4),
    }[mode]
    total, every = 16, 5  # crosses epoch boundaries in every mode
    reference, _ = _run(data, total)
    _, states = _run(data, 2 * every, every=every)
    for k, state in zip((every, 2 * every), states):
        resumed, tail = _run(data, total - k, state=state)
        assert [b["keys"] for b in resumed] == [b["keys"] for b in reference[k:]], (mode, k)
        for got, want in zip(resumed, reference[k:]):
            assert torch.equal(got["images"], want["images"])
    full_stats = _run(data, total)[1][-1]
    assert tail[-1] == full_stats  # skip counts carry over too


_CHILD = """
import json, os, sys, torch
from clipa.config import DataConfig
from clipa.data import build_train_loader
source, out, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = DataConfig(source=source, workers=2, shuffle_buffer=6)
loader = build_train_loader(data, 16, 3, lambda c: torch.zeros(len(c), 4, dtype=torch.long), seed=5)
with open(os.path.join(out, "keys.txt"), "w") as log:
    for step, batch in enumerate(loader, start=1):
        log.write(" ".join(batch["keys"]) + "\\n")
        log.flush()
        if step % every == 0:  # a checkpoint: written aside, then renamed (atomic)
            tmp = os.path.join(out, "state.tmp")
            with open(tmp, "w") as f:
                json.dump({"step": step, "loader": loader.state_dict()}, f)
            os.replace(tmp, os.path.join(out, "state.json"))
"""


def test_killed_run_resumes_from_its_checkpoint_exactly(tmp_path):
    """A training-like process is SIGKILLed mid-run; a new loader resumes from its last saved
    state, and the key sequence equals an uninterrupted run's."""
    source = bad_data(tmp_path)[0]
    total, every, kill_after = 16, 4, 9
    child = subprocess.Popen([sys.executable, "-c", _CHILD, source, str(tmp_path), str(every)],
                             cwd=tmp_path, stderr=subprocess.DEVNULL)
    keys_file, deadline = tmp_path / "keys.txt", time.time() + 120
    try:
        while not (keys_file.exists() and len(keys_file.read_text().splitlines()) >= kill_after):
            assert child.poll() is None and time.time() < deadline, "the child stopped or is too slow"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    seen = [line.split() for line in keys_file.read_text().splitlines()]
    saved = json.loads((tmp_path / "state.json").read_text())
    step = saved["step"]
    assert step >= 8 and len(seen) >= step  # killed between checkpoints, past the second
    resumed, _ = _run(DataConfig(source=source, workers=2, shuffle_buffer=6), total - step, state=saved["loader"])
    reference, _ = _run(DataConfig(source=source, workers=2, shuffle_buffer=6), total)
    ref_keys = [b["keys"] for b in reference]
    assert seen[:step] == ref_keys[:step]
    assert seen[:step] + [b["keys"] for b in resumed] == ref_keys


@pytest.mark.parametrize("shards", [8, 3])  # by shard, and by sample when shards < ranks x workers
def test_no_key_repeats_within_an_epoch_across_ranks_and_workers(tmp_path, shards):
    per_shard = 40 // shards
    source = good_shards(tmp_path, shards, per_shard)
    everything = {f"s{s}_{i}" for s in range(shards) for i in range(per_shard)}
    seen: list[list[str]] = [[], []]
    for rank in range(2):
        loader = build_train_loader(DataConfig(source=source, workers=2, shuffle_buffer=5), 16, 1, zero_tokens,
                                    seed=3, rank=rank, world_size=2)
        for epoch, batches in enumerate(epochs(loader, 2)):
            seen[epoch] += [k for b in batches for k in b["keys"]]
    for keys in seen:
        repeated = [k for k, n in Counter(keys).items() if n > 1]
        assert not repeated and set(keys) == everything
    assert seen[0] != seen[1]  # a new shard order and shuffle each epoch


def test_resume_refuses_a_changed_setup(tmp_path):
    source = good_shards(tmp_path, 4, 3)
    loader = build_train_loader(DataConfig(source=source, workers=2), 16, 2, zero_tokens, seed=0)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(ValueError, match="workers: saved 2, now 1"):
        build_train_loader(DataConfig(source=source, workers=1), 16, 2, zero_tokens, seed=0, state=state)
    write_tar(tmp_path / "s-4.tar", [])
    with pytest.raises(ValueError, match="source: saved"):
        build_train_loader(DataConfig(source=source.replace("0..3", "0..4"), workers=2), 16, 2, zero_tokens,
                           seed=0, state=state)
    # a new batch size (a new stage) continues the same sample stream
    build_train_loader(DataConfig(source=source, workers=2), 16, 4, zero_tokens, seed=0, state=state)

"""The training loader the trainer iterates: endless batches, exact position, skip counts.

Every source, built in or read from disk, gives a :class:`Loader`: iterate for endless
``{"images", "text", "keys"}`` batches (images uint8, in page-locked memory where CUDA is
available; the trainer normalises them on its device by :func:`~.transforms.normalise` with the
model's preprocessing), ``state_dict()`` for the position after the last batch (passed back as
``state`` to continue exactly there), ``stats()`` for skipped samples by reason and ``close()``
to end its worker processes at once (also a context manager; a dropped loader closes itself).
:func:`build_train_loader` is the one constructor: a built-in source (:mod:`.builtin`) builds
its own loader, anything else a :class:`TrainLoader` over shards, CSV or folders.

Two ways to count an epoch:

- ``data.num_samples`` unset (and not resampled): an epoch is one pass over the data. Each
  worker reads its share of that pass's shard order and stops; in the next epoch the same
  (persistent) workers, or new ones, read the next pass. No sample is seen twice in an epoch across ranks
  and workers; each worker drops its last partial batch.
- ``data.num_samples`` set, or ``data.resampled``: workers stream forever (pass after pass,
  or shards drawn with replacement) and an epoch is ``ceil(num_samples / (batch * world))``
  batches per rank.

A DataLoader returns batches round-robin over its workers (skipping finished ones), so the
position is: each worker's :class:`~clipa.data.stream.Position` after its last delivered
batch, plus whose turn is next. Resuming starts the workers from those positions, rotated
so that the turn order continues, and replays nothing.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from collections import Counter
from typing import Callable, Generator, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from .builtin import built_in
from .decode import DeviceDecoder, worker_decoder
from .samples import DecodeOptions, describe
from .sources import Source, load_source
from .stream import BatchStream, EmptySourceError, ShardPlan, StreamConfig, start_position

log = logging.getLogger("clipa.data")

STATE_VERSION = 1

@runtime_checkable
class Loader(Protocol):
    """What the trainer needs from a training loader."""

    # a generator: the trainer closes it when a stage ends or stops, which ends its workers
    def __iter__(self) -> Generator[dict, None, None]: ...

    def state_dict(self) -> dict: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def worker_signals(worker_id: int) -> None:
    """In a loader worker: leave Ctrl-C and SIGUSR1 (which a terminal or SLURM sends to every
    process) to the training process, which finishes its step and saves first. SIGTERM keeps
    its default, also when the worker was forked from a process that catches it: it is how
    DataLoader and multiprocessing's exit stop workers, and the save needs none of them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_state(state: dict, version: int, fingerprint: dict) -> None:
    """Raise unless ``state`` was saved by a loader of this ``version`` and the same setup."""
    if state.get("version") != version:
        raise ValueError(f"loader state version {state.get('version')} is not {version}")
    saved = state["fingerprint"]
    differ = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in fingerprint.items() if saved.get(k) != v]
    if differ:
        raise ValueError("cannot resume the data loader exactly, the setup changed: " + "; ".join(differ))


class TrainLoader:
    """Iterable of ``{"images", "text", "keys"}`` batches, forever; see the module docstring."""

    def __init__(self, source: Source, cfg: StreamConfig, transform: Callable, tokenize: Callable,
                 num_workers: int, num_samples: int | None, state: dict | None = None,
                 prefetch_factor: int = 4, persistent_workers: bool = True,
                 device_decoder: DeviceDecoder | None = None, pin_memory: bool = False):
        self.source, self.cfg, self.transform, self.tokenize = source, cfg, transform, tokenize
        self.device_decoder = device_decoder  # data.decode: cuda: workers pass JPEG bytes, decoded here
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        # persistent workers outlive an epoch (the dataset counts its passes); without workers it is moot
        self.persistent = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory  # the runtime's: uint8 batches in page-locked memory, asynchronous copies
        self.plan = ShardPlan(source, cfg)
        self._batches = None  # the DataLoader iterator whose workers are running, if any
        self.batches_per_epoch = (
            max(1, math.ceil(num_samples / (cfg.batch_size * cfg.world_size))) if cfg.endless else None
        )
        self.epoch, self.batches, self.next_worker = 0, 0, 0
        self.skipped: Counter = Counter()  # from finished epochs
        self.positions = self._fresh_positions(0)
        if state is not None:
            self._load(state)

    # ------------------------------------------------------------------ position

    def _fingerprint(self) -> dict:
        c = self.cfg
        return {"source": self.source.fingerprint(), "seed": c.seed, "rank": c.rank, "world_size": c.world_size,
                "workers": c.workers, "shuffle_buffer": c.shuffle_buffer, "resampled": c.resampled,
                "endless": c.endless}

    def _fresh_positions(self, epoch: int) -> list[dict]:
        """Every worker at the start of ``epoch``'s pass (one-pass mode) or of its stream."""
        return [start_position(self.plan, self.cfg.rank * self.cfg.workers + w, epoch) for w in range(self.cfg.workers)]

    def state_dict(self) -> dict:
        """JSON-able position after the last batch yielded (and the skip counts so far)."""
        return json.loads(json.dumps({
            "version": STATE_VERSION, "fingerprint": self._fingerprint(), "epoch": self.epoch,
            "batches": self.batches, "next_worker": self.next_worker, "skipped": dict(self.skipped),
            "workers": self.positions,
        }))

    def _load(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._fingerprint())
        self.epoch, self.batches, self.next_worker = state["epoch"], state["batches"], state["next_worker"]
        self.skipped = Counter(state["skipped"])
        self.positions = [dict(p) for p in state["workers"]]

    def stats(self) -> dict[str, int]:
        """Skipped samples (and shard events) by reason, over the whole run so far."""
        total = Counter(self.skipped)
        for p in self.positions:
            total.update(p["stats"])
        return dict(sorted((k, v) for k, v in total.items() if v))

    # ------------------------------------------------------------------ iteration

    def _dataloader(self) -> DataLoader:
        """A DataLoader that starts at the current position and, iterated again, plays the next epochs."""
        dataset = BatchStream(self.source, self.cfg, [dict(p) for p in self.positions], self.epoch, self.next_worker,
                              self.transform, self.tokenize)
        workers = {"prefetch_factor": self.prefetch_factor, "persistent_workers": self.persistent} \
            if self.num_workers > 0 else {}
        return DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.cfg.seed), worker_init_fn=worker_signals,
            **workers,  # the generator leaves the global RNG alone
        )

    def __iter__(self) -> Generator[dict, None, None]:
        """uint8 ``[B, 3, S, S]`` images (pinned for a CUDA runtime; the trainer normalises them
        on its device), token ids and keys. Closing the generator (or the loader) ends the workers."""
        loader = None
        try:
            while True:
                if loader is None or not self.persistent:
                    loader = self._dataloader()
                self._batches = iter(loader)
                yield from self._pass()
                self._finish_pass()
        finally:
            self.close()

    def close(self) -> None:
        """End the worker processes now (their batches and descriptors with them), rather than
        whenever the garbage collector reaches a dropped loader."""
        batches, self._batches = getattr(self, "_batches", None), None
        shutdown = getattr(batches, "_shutdown_workers", None)  # DataLoader's own way out (its __del__ uses it)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _pass(self) -> Generator[dict, None, None]:
        """The batches of one DataLoader pass (in one-pass mode, one epoch of every worker)."""
        for item in self._batches:
            worker = item.pop("_worker")
            self.positions[worker] = json.loads(item.pop("_state"))
            self.next_worker = (worker + 1) % self.cfg.workers
            if "images" not in item:  # a worker's final position in one-pass mode
                continue
            if isinstance(item["images"], list):  # crops and JPEG bytes: decode those on the device
                item["images"] = self.device_decoder(item["images"], item.pop("seeds"))
                self.skipped.update(self.device_decoder.skipped)
                self.device_decoder.skipped.clear()
            self.batches += 1
            if self.batches_per_epoch is not None and self.batches == self.batches_per_epoch:
                self._log_epoch()
                self.epoch, self.batches = self.epoch + 1, 0
            yield item

    def _finish_pass(self) -> None:
        """One-pass mode: every worker has finished its share of this epoch's pass."""
        if self.batches == 0:
            read = sum(p["emitted"] for p in self.positions) if self.epoch == 0 else None
            held = f"its {self.cfg.workers} loader worker(s) read {read} sample(s) in all, " if read is not None else ""
            raise EmptySourceError(
                f"data source {self.source.spec!r} gave rank {self.cfg.rank} no complete batch of "
                f"{self.cfg.batch_size} in epoch {self.epoch}: {held}skipped {describe(self.stats())}, and each worker "
                "makes batches from its own shards; lower stage.batch_size (or data.workers), or add data"
            )
        self._log_epoch()
        for p in self.positions:
            self.skipped.update(p["stats"])
        self.epoch, self.batches, self.next_worker = self.epoch + 1, 0, 0
        self.positions = self._fresh_positions(self.epoch)

    def _log_epoch(self) -> None:
        skipped = self.stats()
        message = f"data epoch {self.epoch} done ({self.batches} batches on rank {self.cfg.rank})"
        log.log(logging.WARNING if skipped else logging.INFO, "%s; skipped so far: %s", message, describe(skipped))


def build_train_loader(
    data: DataConfig,
    image_size: int,
    batch_size: int,
    tokenize: Callable[[list[str]], torch.LongTensor],
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict | None = None,
    pin_memory: bool = False,
) -> Loader:
    """The training loader for ``data`` (its ``workers`` decided: the stage plan's, from the
    runtime): ``batch_size`` samples per batch on this rank, images at ``image_size``, captions
    through ``tokenize``, continuing from ``state`` if given; batches pinned with ``pin_memory``."""
    builtin = built_in(data.source)
    if builtin is not None:
        return builtin.load("loader")(image_size, batch_size, tokenize, seed=seed, state=state, rank=rank,
                                      world_size=world_size, pin_memory=pin_memory)
    if data.workers is None:
        raise ValueError("data.workers is undecided: pass the runtime's worker count (clipa.runtime.resolve_runtime)")
    if data.weights is not None and not data.resampled:
        raise ValueError(
            "data.weights needs data.resampled: true (each weight multiplies the chance of drawing "
            "its source's shards, like OpenCLIP's --train-data-upsampling-factors)"
        )
    if data.resampled and data.num_samples is None:
        raise ValueError("data.resampled needs data.num_samples (the samples in an epoch)")
    source = load_source(data.source, data.weights, image_key=data.csv_image_key,
                         caption_key=data.csv_caption_key, separator=data.csv_separator)
    cfg = StreamConfig(
        seed=seed, rank=rank, world_size=world_size, workers=max(1, data.workers), batch_size=batch_size,
        shuffle_buffer=data.shuffle_buffer, resampled=data.resampled,
        endless=data.num_samples is not None or data.resampled,
        decode=DecodeOptions(data.caption_choice, data.max_image_pixels),
    )
    device_decoder = None
    if data.decode == "cuda":
        device_decoder = DeviceDecoder(image_size, data, "cuda")
        device_decoder.check()  # no GPU or no codec: one line now, not in the first step
    return TrainLoader(source, cfg, worker_decoder(image_size, data), tokenize, data.workers, data.num_samples,
                       state, data.prefetch_factor, data.persistent_workers, device_decoder, pin_memory)

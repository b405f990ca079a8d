"""One loader worker's part of the data: shard order, shuffle buffer, decoding and batches.

Everything random is a pure function of (seed, stream, worker, counter), so a worker's
whole position fits in a small JSON-able :class:`Position`: which shard of its sequence
it is reading and how far, which samples sit in its shuffle buffer (as shard and group
indices, re-read on resume), how many it has taken out, and its skip counts. A worker
restarted from a Position produces exactly the batches the original would have.

Global worker ``g = rank * workers + worker``, out of ``G = world_size * workers``.
Without ``resampled``, pass ``p`` is a seeded permutation of all shards; worker ``g``
takes every G-th shard of it, or, with fewer shards than workers, every G-th sample.
With ``resampled``, every worker draws shards with replacement, weighted.
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .samples import BadSample, DecodeOptions, count_skip, decode_sample, describe, pick_caption
from .sources import Source
from .tar import ShardError

_MASK = (1 << 64) - 1
_SHUFFLE, _SAMPLE, _RESAMPLE, _PERMUTE = 1, 2, 3, 4  # salts: independent random streams


def mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 chained): a counter-based random number."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


class EmptySourceError(RuntimeError):
    """The data source produced no usable sample (or not one complete batch)."""


@dataclass(frozen=True)
class StreamConfig:
    seed: int
    rank: int
    world_size: int
    workers: int  # loader workers per rank, at least 1 (0 DataLoader workers = 1 in-process)
    batch_size: int
    shuffle_buffer: int
    resampled: bool
    endless: bool  # passes follow each other forever; else one pass per epoch
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    @property
    def total_workers(self) -> int:
        return self.world_size * self.workers


@dataclass
class Position:
    """Where one worker is; JSON-able through :func:`dataclasses.asdict`."""

    q: int = 0  # index in the worker's shard sequence (over all passes)
    offset: int = 0  # groups of shard q already read
    buffer: list = field(default_factory=list)  # [shard_id, group] of each buffered sample
    emitted: int = 0  # samples taken out of the buffer: the shuffle's counter
    lively_q: int = 0  # q when a usable sample last came out or the buffer was still filling
    stats: dict = field(default_factory=dict)  # skipped samples by reason
    done: bool = False  # the worker has finished its epoch (one-pass mode)


class ShardPlan:
    """Which shard each worker reads at each step of its sequence."""

    def __init__(self, source: Source, cfg: StreamConfig):
        self.n = len(source.shards)
        self.cfg = cfg
        self.split_samples = not cfg.resampled and self.n < cfg.total_workers
        self._cumulative: list[float] = []
        total = 0.0
        for shard in source.shards:
            total += shard.weight
            self._cumulative.append(total)
        self._permutation: tuple[int, list[int]] | None = None

    def pass_length(self, g: int) -> int:
        if self.cfg.resampled or self.split_samples:
            return self.n
        return len(range(g, self.n, self.cfg.total_workers))

    def _order(self, p: int) -> list[int]:
        if self._permutation is None or self._permutation[0] != p:
            order = list(range(self.n))
            random.Random(mix(self.cfg.seed, _PERMUTE, p)).shuffle(order)
            self._permutation = (p, order)
        return self._permutation[1]

    def shard_at(self, g: int, q: int) -> tuple[int, Callable[[int], bool]]:
        """(shard id, which of its groups are this worker's) at step ``q`` of worker ``g``."""
        G = self.cfg.total_workers
        if self.cfg.resampled:
            u = mix(self.cfg.seed, _RESAMPLE, g, q) / 2**64 * self._cumulative[-1]
            return min(bisect.bisect_right(self._cumulative, u), self.n - 1), lambda i: True
        m = self.pass_length(g)
        p, c = divmod(q, m)
        if self.split_samples:
            return self._order(p)[c], lambda i: (c + i) % G == g
        return self._order(p)[g + c * G], lambda i: True


class WorkerStream:
    """Batches of one worker from its :class:`Position`, which it keeps up to date."""

    def __init__(self, source: Source, cfg: StreamConfig, plan: ShardPlan, g: int, position: dict,
                 stream_id: int, end_q: int | None, transform: Callable, tokenize: Callable):
        """``transform``: image bytes -> uint8 ``[3, S, S]`` (decoding included, so that the crop can
        be drawn before the pixels are decoded); batches stay uint8 (the
        loader normalises them in the main process: a quarter of the bytes between processes)."""
        self.source, self.cfg, self.plan, self.g = source, cfg, plan, g
        self.pos = Position(**position)
        self.stream_id, self.end_q = stream_id, end_q
        self.transform, self.tokenize = transform, tokenize
        self.in_process = get_worker_info() is None  # then keep the caller's torch RNG untouched
        self.buffer: list[tuple[list[int], dict]] = []

    def snapshot(self) -> str:
        """The position as JSON (``asdict`` would deep-copy the buffer list: slow per batch)."""
        self.pos.buffer = [ref for ref, _ in self.buffer]
        return json.dumps(vars(self.pos))

    def _skip(self, reason: str, where: str, detail: str = "") -> None:
        count_skip(self.pos.stats, reason, f"{where} {detail}")

    def _restore_buffer(self) -> None:
        """Re-read the samples a saved shuffle buffer held (a few shards at most)."""
        wanted: dict[int, set[int]] = {}
        for shard_id, index in self.pos.buffer:
            wanted.setdefault(shard_id, set()).add(index)
        found: dict[tuple[int, int], dict] = {}
        for shard_id, indices in wanted.items():
            try:
                for index, raw in self.source.read(shard_id, indices.__contains__, max(indices) + 1):
                    found[shard_id, index] = raw
            except ShardError as e:
                self._skip(e.reason, str(e))
        self.buffer = [(ref, found[tuple(ref)]) for ref in self.pos.buffer if tuple(ref) in found]

    def _read(self) -> Iterator[tuple[list[int], dict]]:
        pos, m = self.pos, self.plan.pass_length(self.g)
        while self.end_q is None or pos.q < self.end_q:
            if self.end_q is None and pos.q - pos.lively_q >= 2 * m:  # endless: check, not hang
                raise EmptySourceError(
                    f"{self.source.spec!r}: loader worker {self.g} read its shards twice over without "
                    f"one usable sample; skipped so far: {describe(pos.stats)}"
                )
            shard_id, mine = self.plan.shard_at(self.g, pos.q)
            start = pos.offset
            try:
                for index, raw in self.source.read(shard_id, lambda i: i >= start and mine(i)):
                    pos.offset = index + 1
                    yield [shard_id, index], raw
            except ShardError as e:
                self._skip(e.reason, str(e))
            pos.q, pos.offset = pos.q + 1, 0

    def _shuffled(self) -> Iterator[dict]:
        size, pos, buf = self.cfg.shuffle_buffer, self.pos, self.buffer
        for item in self._read():
            if size <= 1:
                out = item
            elif len(buf) < size:
                buf.append(item)
                pos.lively_q = pos.q
                continue
            else:
                k = mix(self.cfg.seed, _SHUFFLE, self.stream_id, self.g, pos.emitted) % size
                out, buf[k] = buf[k], item
            pos.emitted += 1
            yield out[1]
        while self.end_q is not None and buf:  # end of the epoch: drain in random order
            k = mix(self.cfg.seed, _SHUFFLE, self.stream_id, self.g, pos.emitted) % len(buf)
            out, buf[k] = buf[k], buf[-1]
            buf.pop()
            pos.emitted += 1
            yield out[1]

    def _pixels(self, data: bytes, seed: int) -> torch.Tensor:
        """Image bytes -> uint8 tensor through the transform, its randomness seeded per sample."""
        saved = torch.get_rng_state() if self.in_process else None
        torch.default_generator.manual_seed(seed)
        try:
            return self.transform(data)
        finally:
            if saved is not None:
                torch.set_rng_state(saved)

    def batches(self) -> Iterator[dict]:
        """Full uint8 batches, each with the position after it; then (one-pass mode) a final position."""
        if self.pos.done:
            return
        self._restore_buffer()
        keys, captions, images, seeds = [], [], [], []
        for raw in self._shuffled():
            seed = mix(self.cfg.seed, _SAMPLE, self.stream_id, self.g, self.pos.emitted)
            try:
                all_captions, image = decode_sample(raw, self.cfg.decode, image=partial(self._pixels, seed=seed))
            except BadSample as e:
                self._skip(e.reason, f"{raw.get('__url__')} {raw['__key__']}", str(e))
                continue
            self.pos.lively_q = self.pos.q
            keys.append(raw["__key__"])
            captions.append(pick_caption(all_captions, self.cfg.decode.caption_choice, seed))
            images.append(image)
            seeds.append(seed)
            if len(keys) == self.cfg.batch_size:
                batch = {"text": self.tokenize(captions), "keys": keys, "_state": self.snapshot()}
                if all(x.dim() == 3 for x in images):
                    batch["images"] = torch.stack(images)  # [B, 3, S, S] uint8
                else:  # JPEG bytes among them, decoded on the GPU by the loader (data.decode: cuda)
                    batch["images"], batch["seeds"] = images, seeds
                yield batch
                keys, captions, images, seeds = [], [], [], []
        self.pos.done = True
        yield {"_state": self.snapshot()}


def start_position(plan: ShardPlan, g: int, epoch: int) -> dict:
    """Worker ``g``'s position at the start of ``epoch``'s pass (one-pass mode) or of its stream."""
    q = 0 if plan.cfg.endless else epoch * plan.pass_length(g)
    return asdict(Position(q=q, lively_q=q))


class BatchStream(IterableDataset):
    """The IterableDataset a DataLoader runs: each worker process plays one logical worker.

    The first pass over it starts the workers at ``positions`` (one-pass mode: in ``epoch``),
    with DataLoader worker 0 playing logical worker ``rotation``, so that a resumed loader
    continues the round-robin order of batches where the old one stopped. Each further pass
    (a persistent worker iterated again) is the next epoch from its start, unrotated.
    """

    def __init__(self, source: Source, cfg: StreamConfig, positions: list[dict], epoch: int, rotation: int,
                 transform: Callable, tokenize: Callable):
        self.source, self.cfg, self.positions = source, cfg, positions
        self.epoch, self.rotation = epoch, rotation
        self.transform, self.tokenize = transform, tokenize
        self.passes = 0  # counted in each worker's own copy (persistent workers keep it)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        first, epoch = self.passes == 0, self.epoch + self.passes
        self.passes += 1
        worker = ((info.id if info else 0) + (self.rotation if first else 0)) % self.cfg.workers
        g = self.cfg.rank * self.cfg.workers + worker
        plan = ShardPlan(self.source, self.cfg)
        stream = WorkerStream(
            self.source, self.cfg, plan, g, self.positions[worker] if first else start_position(plan, g, epoch),
            0 if self.cfg.endless else epoch, None if self.cfg.endless else (epoch + 1) * plan.pass_length(g),
            self.transform, self.tokenize,
        )
        for item in stream.batches():
            item["_worker"] = worker
            yield item

"""``clipa data resize``: webdataset shards -> the same shards with every image's short side at N px.

CLIPA's pretraining stages see 64-112 px crops; decoding 500 px web photos for them spends the
loader's time on pixels that are thrown away. Resizing the shards once (each image's short
side to ``size``, re-encoded as JPEG) makes every later epoch cheap. Keys, captions and every
other member (``.txt``, ``.json``, ``.cls``, ...) are copied byte for byte; an image whose short
side is already at most ``size`` keeps its bytes. Samples training would skip (the same
decoder, :func:`~clipa.data.samples.decode_sample`) are left out and counted by reason.

Each source shard becomes one output shard of the same name, written under a temporary
name and renamed when complete; ``resize.json`` in the output folder records every finished
shard (samples, skips) after its rename. An interrupted run started again skips the shards
recorded there and redoes the rest, so nothing is written twice or lost.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from PIL import Image
from tqdm import tqdm

from .samples import IMAGE_EXTS, BadSample, DecodeOptions, decode_sample
from .sources import Source, load_source
from .tar import ShardError
from .tools import add_member

RECORD = "resize.json"
_TAR_NAME = re.compile(r"([^/\s]+?)(\.tar|\.tar\.gz|\.tgz)(?=\s|$)")


def output_name(url: str) -> str:
    """The shard's file name (``.../00012.tar.gz`` or a ``pipe:`` command naming it -> ``00012.tar``)."""
    found = _TAR_NAME.findall(url)
    if not found:
        raise ValueError(f"clipa data resize: cannot tell the shard name of {url!r} (no NAME.tar in it)")
    return found[-1][0] + ".tar"


def shrink(image: Image.Image, size: int, quality: int) -> bytes:
    """RGB image -> JPEG bytes with the short side at ``size`` (Lanczos)."""
    scale = size / min(image.size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    out = io.BytesIO()
    image.resize(target, Image.Resampling.LANCZOS).save(out, "JPEG", quality=quality)
    return out.getvalue()


def resize_shard(source: Source, shard_id: int, path: Path, size: int, quality: int,
                 tick: Callable[[int], None] | None = None) -> dict | None:
    """Write shard ``shard_id`` resized to ``path`` (through ``.NAME.tmp``); its samples and skips,
    or None when the shard cannot be read at all (left for the next run)."""
    skipped: Counter = Counter()
    samples = 0
    tmp = path.with_name(f".{path.name}.tmp")
    # decoding at a DCT scale whose short side stays >= size (libjpeg's draft) is most of the speed
    options = DecodeOptions(draft_size=size)
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        try:
            for _, raw in source.read(shard_id):
                try:
                    _, image = decode_sample(raw, options)
                except BadSample as e:
                    skipped[e.reason] += 1
                    continue
                key, ext = raw["__key__"], next(e for e in IMAGE_EXTS if e in raw)
                for member, data in raw.items():
                    if member.startswith("__"):
                        continue
                    if member == ext and min(image.size) > size:
                        add_member(tar, f"{key}.jpg", shrink(image, size, quality))
                    else:
                        add_member(tar, f"{key}.{member}", data)
                samples += 1
                if tick is not None:
                    tick(1)
        except ShardError as e:
            if e.reason == "unreadable_shard":
                tar.close()
                tmp.unlink()
                return None
            skipped[e.reason] += 1  # a damaged shard: the samples before the damage are kept
    os.replace(tmp, path)
    return {"samples": samples, "skipped": dict(skipped)}


def _read_record(out: Path, settings: dict) -> dict:
    record_path = out / RECORD
    if not record_path.is_file():
        return {**settings, "shards": {}}
    record = json.loads(record_path.read_text())
    differ = [f"{k} {record.get(k)!r} (now {v!r})" for k, v in settings.items() if record.get(k) != v]
    if differ:
        raise ValueError(f"{out}: holds a resize with {', '.join(differ)}; use another --output folder")
    return record


def _write_record(out: Path, record: dict) -> None:
    tmp = out / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / RECORD)


def resize(source: str, out_dir: str | Path, size: int, quality: int = 90, workers: int = 1,
           progress: bool | None = None) -> dict:
    """Resize every shard of ``source`` into ``out_dir`` (see the module docstring); the report.

    ``workers`` processes resize shards in parallel; ``progress`` None shows the bar on a terminal.
    """
    if size < 1 or not 1 <= quality <= 100:
        raise ValueError(f"clipa data resize: --size must be >= 1 and --quality in 1..100 (got {size}, {quality})")
    src = load_source(source)
    if any(shard.rows is not None for shard in src.shards):
        raise ValueError(f"clipa data resize reads webdataset shards; {source!r} is a table or folder "
                         "(write shards first with `clipa data convert`)")
    names = [output_name(shard.url) for shard in src.shards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"clipa data resize: several source shards are named {twice[0]}; resize them "
                         "into separate --output folders")
    out = Path(out_dir)
    if any(Path(s.url).resolve() == (out / n).resolve() for s, n in zip(src.shards, names)):
        raise ValueError(f"clipa data resize: --output {out} would overwrite the source shards")
    out.mkdir(parents=True, exist_ok=True)
    record = _read_record(out, {"size": size, "quality": quality})
    todo = [i for i, n in enumerate(names) if not (n in record["shards"] and (out / n).is_file())]
    bar = tqdm(desc=f"resizing to {size} px", unit=" samples", disable=None if progress is None else not progress)

    unreadable: list[str] = []

    def finished(i: int, result: dict | None) -> None:
        if result is None:
            unreadable.append(src.shards[i].url)
            return
        record["shards"][names[i]] = result
        _write_record(out, record)

    if workers <= 1:
        for i in todo:
            finished(i, resize_shard(src, i, out / names[i], size, quality, bar.update))
    else:
        with ProcessPoolExecutor(workers) as pool:
            jobs = {pool.submit(resize_shard, src, i, out / names[i], size, quality): i for i in todo}
            for job in jobs:  # in shard order; the bar moves a shard at a time
                finished(jobs[job], job.result())
                bar.update((job.result() or {}).get("samples", 0))
    bar.close()
    done = {n: record["shards"][n] for n in names if n in record["shards"]}
    (out / "sizes.json").write_text(json.dumps({n: r["samples"] for n, r in done.items()}, indent=1))
    skipped: Counter = Counter(unreadable_shard=len(unreadable))
    for r in done.values():
        skipped.update(r["skipped"])
    report = {"shards": len(done), "resized_now": len(todo) - len(unreadable),
              "samples": sum(r["samples"] for r in done.values()), "skipped": dict(sorted((+skipped).items())),
              "output": str(out)}
    if unreadable:
        report["unreadable"] = unreadable  # not recorded: run the command again to retry them
    return report

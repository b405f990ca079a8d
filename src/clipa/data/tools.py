"""``clipa data convert`` (a folder or CSV -> webdataset shards + sizes.json) and ``clipa data inspect``.

Both read sources exactly as training does (:func:`~clipa.data.sources.load_source`) and
check every sample with the same decoder, so what ``inspect`` reports as skipped is what
training would skip, and ``convert`` writes only samples training can use.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import statistics
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw, ImageFont

from .samples import IMAGE_EXTS, BadSample, DecodeOptions, decode_sample, describe
from .sources import Source, load_source
from .tar import ShardError


def scan(source: Source, skipped: Counter, limit: int | None = None) -> Iterator[tuple[dict, list[str], Image.Image]]:
    """(raw sample, captions, decoded image) of every usable sample, shards in order; the rest
    are counted in ``skipped`` by reason."""
    seen = 0
    for shard_id in range(len(source.shards)):
        try:
            for _, raw in source.read(shard_id):
                if limit is not None and seen >= limit:
                    return
                seen += 1
                try:
                    captions, image = decode_sample(raw, DecodeOptions())
                except BadSample as e:
                    skipped[e.reason] += 1
                    continue
                yield raw, captions, image
        except ShardError as e:
            skipped[e.reason] += 1


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def convert(source: str, out_dir: str | Path, shard_size: int = 10_000, image_key: str = "filepath",
            caption_key: str = "title", separator: str = ",") -> dict:
    """Write ``out_dir/00000.tar, ...`` (img2dataset layout: ``KEY.jpg|png|webp``, ``KEY.txt`` with
    the first caption, ``KEY.json`` with all captions and the source key) and ``sizes.json``."""
    src = load_source(source, image_key=image_key, caption_key=caption_key, separator=separator)
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    sizes: dict[str, int] = {}
    tar, count = None, 0

    def close() -> None:
        tar.close()
        tmp = out / f".{len(sizes):05d}.tar.tmp"
        tmp.rename(out / f"{len(sizes):05d}.tar")
        sizes[f"{len(sizes):05d}.tar"] = count

    for raw, captions, image in scan(src, skipped):
        if tar is None:
            tar, count = tarfile.open(out / f".{len(sizes):05d}.tar.tmp", "w", format=tarfile.USTAR_FORMAT), 0
        key = f"{sum(sizes.values()) + count:09d}"
        ext = next(e for e in IMAGE_EXTS if e in raw)
        add_member(tar, f"{key}.{'jpg' if ext == 'jpeg' else ext}", raw[ext])
        add_member(tar, f"{key}.txt", captions[0].encode("utf-8"))
        add_member(tar, f"{key}.json", json.dumps({"key": raw["__key__"], "captions": captions}).encode("utf-8"))
        count += 1
        if count == shard_size:
            close()
            tar = None
    if tar is not None:
        close()
    if not sizes:  # nothing usable: an empty output is a mistake to report, not a result
        if created:
            shutil.rmtree(out)
        raise ValueError(f"{source} gave no usable sample (skipped: {describe(dict(skipped))}); no shard written")
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return {"shards": len(sizes), "samples": sum(sizes.values()), "skipped": dict(skipped)}


def _grid(samples: list[tuple[str, Image.Image]], path: Path, cell: int = 200) -> None:
    """Thumbnails in a square-ish grid, each over the first three lines of its caption."""
    from ..viz import place_words

    cols = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / cols)
    font = ImageFont.load_default(size=12)
    line_h, caption_lines = 15, 3
    text_h = caption_lines * line_h + 6
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (caption, image) in enumerate(samples):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        thumb = image.copy()
        thumb.thumbnail((cell - 8, cell - 8))
        grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        for wx, row, word in place_words(caption.split(), font, x + 4, x + cell - 4):
            if row < caption_lines:
                draw.text((wx, y + cell + row * line_h), word, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def _length_stats(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 2), "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]}


def inspect(source: str, grid: str | Path | None = None, grid_samples: int = 16, max_samples: int | None = None,
            image_key: str = "filepath", caption_key: str = "title", separator: str = ",") -> dict:
    """Counts, skipped samples by reason, caption lengths (words, characters) and a grid PNG."""
    src = load_source(source, image_key=image_key, caption_key=caption_key, separator=separator)
    skipped: Counter = Counter()
    words, chars, shown, usable, captions_total = [], [], [], 0, 0
    for _, captions, image in scan(src, skipped, limit=max_samples):
        usable += 1
        captions_total += len(captions)
        words += [len(c.split()) for c in captions]
        chars += [len(c) for c in captions]
        if len(shown) < grid_samples:
            shown.append((captions[0], image))
    report = {
        "shards": len(src.shards), "samples": usable + sum(v for k, v in skipped.items() if not k.endswith("_shard")),
        "usable": usable, "captions": captions_total, "skipped": dict(sorted(skipped.items())),
        "caption_words": _length_stats(words), "caption_chars": _length_stats(chars),
    }
    if grid is not None and shown:
        _grid(shown, Path(grid))
        report["grid"] = str(grid)
    return report

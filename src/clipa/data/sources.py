"""Where samples come from: a ``data.source`` string -> a flat list of shards.

A source string joins one or more sources with ``::``. Each is

- webdataset shards: a brace pattern (``data/{000..123}.tar``), a local path, a URL or a
  ``pipe:`` command (opened by ``webdataset.gopen``); ``.tar.gz``/``.tgz`` are gunzipped;
- a CSV/TSV file with an image-path column and a caption column (paths relative to
  the file's folder; ``.tsv`` files are read with a tab whatever ``csv_separator`` says);
- a folder of images (searched recursively) with a captions file in it: ``captions.json``
  (``{"relative/path.jpg": "caption" or ["caption", ...]}``) or ``captions.csv``/
  ``captions.tsv`` (columns ``csv_image_key``, ``csv_caption_key``; an image on several
  rows gets all those captions).

Tables (CSV and folders) are cut into shards of :data:`TABLE_SHARD_ROWS` rows, so every
kind of source is read, shuffled, split by rank and worker and resumed the same way.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import os
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import braceexpand

from .samples import IMAGE_EXTS
from .tar import ShardError, iter_groups

TABLE_SHARD_ROWS = 1000
CAPTION_FILES = ("captions.json", "captions.tsv", "captions.csv")


@dataclass(frozen=True, slots=True)  # slots: millions of rows stay small
class Row:
    path: str
    key: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Shard:
    url: str  # a tar URL/path, or the table (CSV file or folder) the rows come from
    weight: float = 1.0
    rows: tuple[int, int] | None = None  # [start, stop) of a table


@dataclass
class Source:
    """Every shard of a (joined) source, and the rows of its tables."""

    spec: str
    shards: list[Shard]
    tables: dict[str, list[Row]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identifies the shard list, so a saved loader position is not applied to other data."""
        names = "\n".join(f"{s.url}|{s.rows}" for s in self.shards)
        return hashlib.sha1(names.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def read(self, shard_id: int, keep=lambda i: True, stop: int | None = None) -> Iterator[tuple[int, dict]]:
        """(group index, raw sample) of one shard; damage raises :class:`ShardError`."""
        shard = self.shards[shard_id]
        if shard.rows is not None:
            yield from _read_rows(self.tables[shard.url], shard, keep, stop)
            return
        with _open_tar(shard.url) as (stream, f):
            try:
                for index, group in iter_groups(f, keep, stop):
                    group["__url__"] = shard.url
                    yield index, group
            except ShardError as e:
                if e.at_eof and shard.url.startswith("pipe:") and (code := _exit_code(stream)):
                    raise ShardError("unreadable_shard", f"{shard.url}: command failed (exit {code})") from None
                raise ShardError(e.reason, f"{shard.url}: {e}") from None
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise ShardError("corrupt_shard", f"{shard.url}: {e}") from None
            except OSError as e:
                raise ShardError("unreadable_shard", f"{shard.url}: {e}") from None


def _exit_code(pipe) -> int:
    """A finished ``pipe:`` command's exit status (0 if it is somehow still running)."""
    try:
        return pipe.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return 0


@contextlib.contextmanager
def _open_tar(url: str):
    import webdataset as wds

    try:
        stream = wds.gopen(url, "rb")
    except Exception as e:  # missing file, permission, bad scheme
        raise ShardError("unreadable_shard", f"{url}: {e}") from None
    try:
        if url.endswith((".gz", ".tgz")):
            with gzip.GzipFile(fileobj=stream) as unzipped:
                yield stream, unzipped
        else:
            yield stream, stream
    finally:
        with contextlib.suppress(Exception):  # a pipe closed early may complain
            stream.close()


def _read_rows(table: list[Row], shard: Shard, keep, stop) -> Iterator[tuple[int, dict]]:
    start, end = shard.rows
    for index in range(end - start):
        if stop is not None and index >= stop:
            return
        if not keep(index):
            continue
        row = table[start + index]
        raw: dict = {"__key__": row.key, "__url__": shard.url, "captions": list(row.captions)}
        ext = Path(row.path).suffix.lower().lstrip(".")
        try:
            raw[ext if ext in IMAGE_EXTS else "jpg"] = Path(row.path).read_bytes()
        except OSError:
            pass  # counted as missing_image
        yield index, raw


def _read_table(path: Path, image_key: str, caption_key: str, separator: str) -> list[tuple[str, str]]:
    if path.suffix.lower() == ".tsv":
        separator = "\t"
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter=separator)
        missing = [k for k in (image_key, caption_key) if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])}); "
                "set data.csv_image_key / data.csv_caption_key / data.csv_separator"
            )
        return [(r[image_key] or "", r[caption_key] or "") for r in reader]


def csv_rows(path: Path, image_key: str, caption_key: str, separator: str) -> list[Row]:
    """One row per CSV line; keys are ``image/path#line`` (an image may appear on several lines)."""
    rows = []
    for i, (image, caption) in enumerate(_read_table(path, image_key, caption_key, separator)):
        rows.append(Row(str(path.parent / image), f"{image}#{i}", (caption,)))
    return rows


def folder_rows(folder: Path, image_key: str, caption_key: str, separator: str) -> list[Row]:
    """One row per image file (sorted); captions from the folder's captions file."""
    found = [folder / n for n in CAPTION_FILES if (folder / n).is_file()]
    if not found:
        raise FileNotFoundError(f"{folder}: a folder source needs one of {', '.join(CAPTION_FILES)}")
    captions: dict[str, list[str]] = {}
    if found[0].suffix == ".json":
        for name, value in json.loads(found[0].read_text(encoding="utf-8", errors="surrogateescape")).items():
            captions[name] = [value] if isinstance(value, str) else list(value)
    else:
        for image, caption in _read_table(found[0], image_key, caption_key, separator):
            captions.setdefault(image, []).append(caption)
    images = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.is_file()
    )
    return [Row(str(folder / name), str(Path(name).with_suffix("")), tuple(captions.get(name, ()))) for name in images]


def _is_remote(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def load_source(spec: str, weights: list[float] | None = None, *, image_key: str = "filepath",
                caption_key: str = "title", separator: str = ",") -> Source:
    """Expand a ``data.source`` string; fails now, with the pattern named, if nothing exists."""
    parts = [p for p in spec.split("::") if p]
    if not parts:
        raise ValueError("data.source is empty")
    if weights is not None and len(weights) != len(parts):
        raise ValueError(f"data.weights has {len(weights)} values for {len(parts)} sources joined by '::'")
    shards: list[Shard] = []
    tables: dict[str, list[Row]] = {}
    for i, part in enumerate(parts):
        weight = 1.0 if weights is None else float(weights[i])
        path = Path(os.path.expanduser(part))
        if not _is_remote(part) and (path.is_dir() or path.suffix.lower() in (".csv", ".tsv")):
            if not path.exists():
                raise FileNotFoundError(f"data.source: {part} does not exist")
            reader = folder_rows if path.is_dir() else csv_rows
            rows = reader(path, image_key, caption_key, separator)
            tables[str(path)] = rows
            shards += [
                Shard(str(path), weight, (s, min(s + TABLE_SHARD_ROWS, len(rows))))
                for s in range(0, len(rows), TABLE_SHARD_ROWS)
            ]
            continue
        urls = list(braceexpand.braceexpand(part))
        if not _is_remote(part) and not any(Path(os.path.expanduser(u)).exists() for u in urls):
            raise FileNotFoundError(f"data.source: no file matches {part!r} ({len(urls)} names tried)")
        shards += [Shard(u if _is_remote(u) else os.path.expanduser(u), weight) for u in urls]
    if not shards:
        raise ValueError(f"data.source {spec!r} has no shards (empty tables?)")
    return Source(spec, shards, tables)

"""Where samples come from: a ``data.source`` string -> a flat list of shards.

A source string joins one or more sources with ``::``. Each is

- webdataset shards: a brace pattern (``data/{000..123}.tar``), a local path, a URL or a
  ``pipe:`` command (opened by ``webdataset.gopen``); ``.tar.gz``/``.tgz`` are gunzipped;
- a CSV/TSV file with an image-path column and a caption column (paths relative to
  the file's folder; ``.tsv`` files are read with a tab whatever ``csv_separator`` says);
- a folder of images (searched recursively) with their captions in a captions file,
  ``captions.json`` (``{"relative/path.jpg": "caption" or ["caption", ...]}``) or
  ``captions.csv``/``captions.tsv`` (columns ``csv_image_key``, ``csv_caption_key``; an image
  on several rows gets all those captions), or in a ``.txt`` file beside each image
  (``cat.jpg`` + ``cat.txt``, the whole file one caption, as in shards); an image the
  captions file lists takes its captions from there;
- a folder of shards (``*.tar``, ``*.tar.gz``, ``*.tgz`` directly in it, in name order), such
  as ``clipa data convert`` writes.

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

from ..config import is_remote
from .samples import IMAGE_EXTS
from .tar import ShardError, iter_groups

TABLE_SHARD_ROWS = 1000
CAPTION_FILES = ("captions.json", "captions.tsv", "captions.csv")


SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class ColumnError(ValueError):
    """A table lacks the column a setting names. ``setting`` is ``image_key`` or ``caption_key``,
    so each front end (config keys, command-line flags) can say which of its own to change."""

    def __init__(self, path: Path, setting: str, column: str, columns: list[str]):
        self.path, self.setting, self.column, self.columns = path, setting, column, columns
        super().__init__(self.message("data.csv_image_key / data.csv_caption_key / data.csv_separator"))

    def message(self, how: str) -> str:
        return f"{self.path}: no column {self.column!r} (columns: {', '.join(self.columns) or 'none'}); set {how}"


@dataclass(frozen=True, slots=True)  # slots: millions of rows stay small
class Row:
    path: str
    key: str
    captions: tuple[str, ...]
    caption_file: str | None = None  # a sidecar .txt, read with the image (for rows without captions)


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
        raw: dict = {"__key__": row.key, "__url__": shard.url}
        if row.captions or row.caption_file is None:
            raw["captions"] = list(row.captions)
        else:  # read as a shard's .txt is, so bad bytes are counted as bad_text
            with contextlib.suppress(OSError):  # gone since listing: counted as missing_caption
                raw["txt"] = Path(row.caption_file).read_bytes()
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
        for setting, column in (("image_key", image_key), ("caption_key", caption_key)):
            if column not in (reader.fieldnames or []):
                raise ColumnError(path, setting, column, list(reader.fieldnames or []))
        return [(r[image_key] or "", r[caption_key] or "") for r in reader]


def csv_rows(path: Path, image_key: str, caption_key: str, separator: str) -> list[Row]:
    """One row per CSV line; keys are ``image/path#line`` (an image may appear on several lines)."""
    rows = []
    for i, (image, caption) in enumerate(_read_table(path, image_key, caption_key, separator)):
        rows.append(Row(str(path.parent / image), f"{image}#{i}", (caption,)))
    return rows


def folder_rows(folder: Path, image_key: str, caption_key: str, separator: str) -> list[Row]:
    """One row per image file (sorted); captions from the folder's captions file, else from the
    ``.txt`` beside the image."""
    found = [folder / n for n in CAPTION_FILES if (folder / n).is_file()]
    captions: dict[str, list[str]] = {}
    if found and found[0].suffix == ".json":
        for name, value in json.loads(found[0].read_text(encoding="utf-8", errors="surrogateescape")).items():
            captions[name] = [value] if isinstance(value, str) else list(value)
    elif found:
        for image, caption in _read_table(found[0], image_key, caption_key, separator):
            captions.setdefault(image, []).append(caption)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    images = sorted(n for n in files if Path(n).suffix.lower().lstrip(".") in IMAGE_EXTS)
    sidecars = {n: Path(n).with_suffix(".txt").as_posix() for n in images}
    sidecars = {n: str(folder / t) for n, t in sidecars.items() if t in files}
    if not found and not sidecars:
        raise FileNotFoundError(
            f"{folder}: a folder source needs its images' captions, in one of {', '.join(CAPTION_FILES)} or "
            "in a .txt file beside each image (cat.jpg + cat.txt), or shards (*.tar) directly in it")
    return [Row(str(folder / name), str(Path(name).with_suffix("")), tuple(captions.get(name, ())),
                sidecars.get(name)) for name in images]


def folder_shards(folder: Path) -> list[str]:
    """The shards directly in ``folder`` (``clipa data convert``'s output), in name order; none
    when it holds a captions file, which makes it an image folder."""
    if any((folder / n).is_file() for n in CAPTION_FILES):
        return []
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(SHARD_SUFFIXES))


def _not_a_source(part: str) -> str:
    """Why a single file that is not a shard or a table cannot be read as training data."""
    kind = "an image" if part.lower().rsplit(".", 1)[-1] in IMAGE_EXTS else "a file that is not a shard or a table"
    return (f"data source {part} is {kind}, not a data source: give webdataset shards (.tar, a brace pattern "
            "or a folder of them), a CSV/TSV file, or a folder of images with captions")


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
        if not is_remote(part) and path.is_dir() and (in_folder := folder_shards(path)):
            shards += [Shard(u, weight) for u in in_folder]
            continue
        if not is_remote(part) and (path.is_dir() or path.suffix.lower() in (".csv", ".tsv")):
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
        if not is_remote(part) and path.is_file() and not part.endswith(SHARD_SUFFIXES):
            raise ValueError(_not_a_source(part))
        urls = list(braceexpand.braceexpand(part))
        if not is_remote(part) and not any(Path(os.path.expanduser(u)).exists() for u in urls):
            raise FileNotFoundError(f"data.source: no file matches {part!r} ({len(urls)} names tried)")
        shards += [Shard(u if is_remote(u) else os.path.expanduser(u), weight) for u in urls]
    if not shards:
        raise ValueError(f"data.source {spec!r} has no shards (empty tables?)")
    return Source(spec, shards, tables)

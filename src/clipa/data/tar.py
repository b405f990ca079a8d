"""A small streaming tar reader that reports damage instead of hiding it.

Python's ``tarfile`` in stream mode treats a corrupt header in the middle of an archive
as its end, so a damaged shard would silently lose its tail. This reader checks every
header checksum; after a corrupt header it resynchronises at the next valid (checksummed
ustar) header, so the samples after the damage are still read, and it marks the sample
the damage cost as damaged. Truncation (end of data inside a header or a member, or a
missing end-of-archive block) raises :class:`ShardError`. The payload of unwanted samples
is skipped without being read, which makes resuming mid-shard cheap.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from itertools import chain
from typing import BinaryIO, Callable, Iterator

from .samples import IMAGE_EXTS

BLOCK = 512
_PAX_PATH = re.compile(rb"\d+ path=(.*)\n")


class ShardError(Exception):
    """A shard that cannot be read (``unreadable_shard``) or is damaged (``corrupt_shard``)."""

    def __init__(self, reason: str, message: str, at_eof: bool = False):
        super().__init__(message)
        self.reason = reason
        self.at_eof = at_eof  # the data ended early (a pipe: command may have failed)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for big sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardError("corrupt_shard", "corrupt tar: not a tar header") from None


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ShardError("corrupt_shard", f"truncated tar: end of data inside {what}", at_eof=True)
    return data


def _skip(f: BinaryIO, n: int, what: str) -> None:
    if n == 0:
        return
    if getattr(f, "seekable", lambda: False)():
        f.seek(n, io.SEEK_CUR)
    else:
        while n:
            n -= len(_read_exact(f, min(n, 1 << 20), what))


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _checksum_ok(header: bytes) -> bool:
    try:
        stored, _ = _octal(header[148:156]), _octal(header[124:136])  # a size field must parse too
    except ShardError:
        return False
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def _resync(f: BinaryIO) -> tuple[bytes | None, int]:
    """(the next valid header, bytes skipped before it); None at the end of the data. The
    ustar magic is required too, so that a payload block passing the checksum by chance is
    not taken for a header."""
    skipped = 0
    while len(block := f.read(BLOCK)) == BLOCK:
        if block[257:262] == b"ustar" and _checksum_ok(block):
            return block, skipped
        skipped += BLOCK
    return None, skipped + len(block)


def iter_members(f: BinaryIO, on_damage: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read) for every regular file; ``read()`` returns its payload, which is skipped
    (seeking where the stream allows) if the caller does not ask for it.

    A corrupt header raises :class:`ShardError`, or, given ``on_damage``, is reported to it
    (one call per damaged stretch, with what was skipped) and reading resumes at the next
    valid header: the member whose header was corrupt is lost, the ones after it are not.
    """
    long_name: str | None = None
    last = "the start of the shard"
    pending: bytes | None = None  # a header found by resynchronising
    while True:
        header, pending = pending or f.read(BLOCK), None
        if not header:
            raise ShardError("corrupt_shard", "truncated tar: no end-of-archive block", at_eof=True)
        if len(header) != BLOCK:
            raise ShardError("corrupt_shard", "truncated tar: end of data inside a header", at_eof=True)
        if header == bytes(BLOCK):
            return
        if not _checksum_ok(header):
            if on_damage is None:
                raise ShardError("corrupt_shard", f"corrupt tar: header checksum mismatch after {last}")
            pending, skipped = _resync(f)
            on_damage(f"corrupt tar header after {last}: skipped {skipped + BLOCK} bytes"
                      + (" to the next valid header" if pending else " to the end of the data"))
            long_name = None
            if pending is None:
                return
            continue
        size, kind = _octal(header[124:136]), header[156:157]
        name = _cstr(header[:100])
        if header[257:262] == b"ustar" and header[345] != 0:
            name = _cstr(header[345:500]) + "/" + name
        if long_name is not None:
            name, long_name = long_name, None
        if kind in (b"L", b"x"):  # GNU long name / pax header: both name the next member
            payload = _read_exact(f, size, "a long-name header")
            _skip(f, _padded(size) - size, "padding")
            if kind == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif m := _PAX_PATH.search(payload):
                long_name = m.group(1).decode("utf-8", "surrogateescape")
            continue
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global pax headers, ...
            _skip(f, _padded(size), f"member {name}")
            continue
        read = False

        def payload(name: str = name, size: int = size) -> bytes:
            nonlocal read
            read = True
            data = _read_exact(f, size, f"member {name}")
            _skip(f, _padded(size) - size, "padding")
            return data

        yield name, payload
        if not read:
            _skip(f, _padded(size), f"member {name}")
        last = name


def split_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``), webdataset's key convention."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None, None
    return name[:dot], name[dot + 1:].lower()


def _whole(exts: set[str]) -> bool:
    """A sample has an image and something to pair it with (caption, label, ...)."""
    return any(e in IMAGE_EXTS for e in exts) and any(e not in IMAGE_EXTS for e in exts)


@dataclass
class _Stretch:
    """A damaged stretch (see :func:`iter_members`) and whether a damaged group accounts for it."""

    why: str
    charged: bool = False


def iter_groups(f: BinaryIO, keep: Callable[[int], bool], stop: int | None = None) -> Iterator[tuple[int, dict]]:
    """(index, {"__key__": key, ext: bytes, ...}) for consecutive members sharing a key.

    Groups are numbered from 0 in archive order; those with ``keep(index)`` false are
    skipped without reading their payloads, and reading ends before group ``stop``. A
    repeated extension starts a new group, as in OpenCLIP. Metadata members (``__name__``)
    and names without an extension are ignored. A group is complete, and yielded, when
    the next one starts; truncation raises :class:`ShardError` and drops the group in progress.

    A damaged stretch (a corrupt header: one member lost, the reader resumes after it) touches
    the group before it and the group after it. A touched group that is no longer whole (no
    image, or nothing but an image) is yielded as ``{"__key__": key, "__damaged__": why}``;
    if neither is, the stretch lost a whole sample or a member no one needs, and one
    ``{"__key__": "<key>#damage", "__damaged__": why}`` stands for it after those groups. These
    entries take group indices like any other, so a re-read numbers the groups the same way.
    """
    reported: list[str] = []
    index, key, exts = -1, None, set()
    group: dict | None = None
    touching: list[_Stretch] = []  # stretches touching the group in progress
    for name, read in chain(iter_members(f, reported.append), [(None, None)]):
        prefix, ext = split_name(name) if name is not None else (None, None)
        if name is not None and (prefix is None or name.rsplit("/", 1)[-1].startswith("__")):
            continue
        arrived = [_Stretch(why) for why in reported]  # between the previous member and this one
        reported.clear()
        if name is not None and prefix == key and ext not in exts:
            touching += arrived
        else:  # the group in progress ends (and the stretches just before this member touch the next)
            if key is not None:
                damaged = bool(touching or arrived) and not _whole(exts)
                if group is not None:
                    yield index, ({"__key__": key, "__damaged__": (touching + arrived)[0].why} if damaged else group)
                for s in touching + arrived:
                    s.charged = s.charged or damaged
            for s in touching + (arrived if name is None else []):  # stretches whose both sides are done
                if not s.charged:
                    index += 1
                    if stop is not None and index >= stop:
                        return
                    if keep(index):
                        yield index, {"__key__": f"{key or ''}#damage", "__damaged__": s.why}
            if name is None:
                return
            touching = arrived
            index, key, exts, group = index + 1, prefix, set(), None
            if stop is not None and index >= stop:
                return
            if keep(index):
                group = {"__key__": prefix}
        exts.add(ext)
        if group is not None:
            group[ext] = read()

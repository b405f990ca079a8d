"""A small streaming tar reader that reports damage instead of hiding it.

Python's ``tarfile`` in stream mode treats a corrupt header in the middle of an archive
as its end, so a damaged shard would silently lose its tail. This reader checks every
header checksum, notices truncation (end of data inside a header or a member, or a
missing end-of-archive block) and raises :class:`ShardError`; it can also skip the
payload of unwanted samples without reading it, which makes resuming mid-shard cheap.
"""

from __future__ import annotations

import io
import re
from typing import BinaryIO, Callable, Iterator

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


def iter_members(f: BinaryIO) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read) for every regular file; ``read()`` returns its payload, which is skipped
    (seeking where the stream allows) if the caller does not ask for it."""
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if not header:
            raise ShardError("corrupt_shard", "truncated tar: no end-of-archive block", at_eof=True)
        if len(header) != BLOCK:
            raise ShardError("corrupt_shard", "truncated tar: end of data inside a header", at_eof=True)
        if header == bytes(BLOCK):
            return
        stored = _octal(header[148:156])
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise ShardError("corrupt_shard", "corrupt tar: header checksum mismatch")
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


def split_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``), webdataset's key convention."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None, None
    return name[:dot], name[dot + 1:].lower()


def iter_groups(f: BinaryIO, keep: Callable[[int], bool], stop: int | None = None) -> Iterator[tuple[int, dict]]:
    """(index, {"__key__": key, ext: bytes, ...}) for consecutive members sharing a key.

    Groups are numbered from 0 in archive order; those with ``keep(index)`` false are
    skipped without reading their payloads, and reading ends before group ``stop``. A
    repeated extension starts a new group, as in OpenCLIP. Metadata members (``__name__``)
    and names without an extension are ignored. A group is complete, and yielded, when
    the next one starts; damage raises :class:`ShardError` and drops the group in progress.
    """
    index, key, exts = -1, None, set()
    group: dict | None = None
    for name, read in iter_members(f):
        prefix, ext = split_name(name)
        if prefix is None or name.rsplit("/", 1)[-1].startswith("__"):
            continue
        if prefix != key or ext in exts:
            if group is not None:
                yield index, group
            index, key, exts, group = index + 1, prefix, set(), None
            if stop is not None and index >= stop:
                return
            if keep(index):
                group = {"__key__": prefix}
        exts.add(ext)
        if group is not None:
            group[ext] = read()
    if group is not None:
        yield index, group

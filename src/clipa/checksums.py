"""A SHA-256 per file of a checkpoint folder, written last and checked before it is used.

A checkpoint whose write was cut short is never renamed into place, but a file can still be
damaged afterwards (a disk error, a copy that stopped early, a flipped byte of the same size).
``write_checksums`` records every file of a folder (sub-folders included) in
``checksums.json``; ``verify_checksums`` re-reads them and raises a ``ChecksumError`` naming
the first file that is missing, shorter or different. A folder written before checksums
existed has no ``checksums.json``: eval and export report it as unverified, and a resume refuses
it unless told to trust it (``train.resume_unverified``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHECKSUM_FILE = "checksums.json"
MAX_RECORD_BYTES = 16 * 2**20  # a record lists a few files (a sharded one, a few per rank): far below this


class ChecksumError(ValueError):
    """A checkpoint file that does not match the checksum recorded when it was written."""


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the checksum record, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != CHECKSUM_FILE)


def write_checksums(folder: str | Path) -> Path:
    """Record size and SHA-256 of every file under ``folder`` in ``folder/checksums.json``
    (written under a temporary name and renamed, so the record is whole or absent)."""
    folder = Path(folder)
    record = {name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
              for name in _files(folder)}
    tmp = folder / f".{CHECKSUM_FILE}.tmp"
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": record}, indent=1))
    os.replace(tmp, folder / CHECKSUM_FILE)
    return folder / CHECKSUM_FILE


def verify_checksums(folder: str | Path) -> bool:
    """Check every file recorded in ``folder/checksums.json``: True when all match, False
    when the folder has no record (written before checksums existed). A missing, resized or
    changed file, or an unreadable record, raises ``ChecksumError`` naming it."""
    folder = Path(folder)
    record_file = folder / CHECKSUM_FILE
    if not record_file.exists():
        return False
    if record_file.stat().st_size > MAX_RECORD_BYTES:
        raise ChecksumError(f"{record_file}: {record_file.stat().st_size:,} bytes, not a checksum record")
    try:
        files = json.loads(record_file.read_text())["files"]
        expected = {name: (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ChecksumError(f"{record_file}: unreadable checksum record ({e})") from None
    for name, (size, digest) in expected.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:  # a record is data: it names files here only
            raise ChecksumError(f"{record_file}: names a file outside its folder: {name[:200]!r}")
        file = folder / name
        if not file.is_file():
            raise ChecksumError(f"{file}: missing (the checkpoint's checksum record lists it)")
        if file.stat().st_size != size:
            raise ChecksumError(f"{file}: {file.stat().st_size} bytes, {size} when written (truncated or damaged)")
        if _sha256(file) != digest:
            raise ChecksumError(f"{file}: contents differ from when it was written (damaged)")
    return True

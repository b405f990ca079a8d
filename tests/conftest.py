import gc
import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipa

# Nothing downloads in tests: huggingface_hub (read at its import, which comes later) stays offline.
os.environ["HF_HUB_OFFLINE"] = "1"

SHARED = Path(os.environ.get("CLIPA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


# Loaders that tests build and drop keep their persistent DataLoader workers until collected, and
# with the default strategy every batch they pass holds a file descriptor; hundreds of loaders in
# one process ran out of descriptors (seen once in a fresh-clone run). Batches through files instead.
torch.multiprocessing.set_sharing_strategy("file_system")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real Flickr8k, CIFAR-10, Imagenette, NLTK data), or skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED} (a fresh clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
    gc.collect()  # loaders a test dropped take their worker processes (and descriptors) with them now


@pytest.fixture(scope="module")
def tiny_model() -> "clipa.CLIP":
    """clipa-tiny (32 px, patch 4) with one block per tower, in eval mode: quick to run anywhere."""
    torch.manual_seed(0)
    return clipa.create_model("clipa-tiny", vision={"layers": 1}, text={"layers": 1}).eval()


# ----------------------------------------------------------------------------- shard builders
# Shared by the data, resume and evaluation tests: tars whose every member (and every flaw) is known.


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 32)) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (about 400 bytes on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = zlib.compress(b"\0" * (width + 1) * 4)  # a few rows only: never decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def corrupt_header(path: Path, member: str) -> None:
    """Overwrite the start of ``member``'s tar header: its checksum no longer matches."""
    data = bytearray(path.read_bytes())
    at = data.index(member.encode())
    data[at:at + 20] = b"\x13" * 20
    path.write_bytes(bytes(data))


def write_samples(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A webdataset shard from ``(key, {ext: bytes})`` samples, members in order."""
    return write_tar(path, [(f"{key}.{ext}", data) for key, files in samples for ext, data in files.items()])

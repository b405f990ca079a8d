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


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real Flickr8k, CIFAR-10, Imagenette, NLTK data), or skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED} (a fresh clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


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


# ----------------------------------------------------------------------------- adversarial helpers
# Shared by tests/test_untrusted.py, tests/test_run_safety.py and benchmarks/faults.py.


def openclip_folder(folder: Path, **vision) -> Path:
    """A tiny model folder in OpenCLIP's layout (config only), its vision settings overridden."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1,
                                           "head_width": 16, **vision},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return folder


def _descendants(pid: int) -> list[int]:
    def parent(p: int) -> int | None:
        try:
            return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(int(p)) == pid]
    return kids + [d for k in kids for d in _descendants(k)]


def stop_rank_one_mid_step(folder: Path, train_args: list[str]) -> str:
    """Run ``torchrun --nproc-per-node 2 -m clipa train ARGS`` on the CPU (timeout 15 s), stop rank
    1 with SIGSTOP once steps run (a hung read, a frozen node), and return what the run printed."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = folder / "out.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "clipa", "train", *train_args, "train.device=cpu", "stage.samples=100000", "stage.batch_size=16",
           "train.timeout_minutes=0.25", f"train.output_dir={folder / 'run'}"]
    with open(out, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stopped = None
    try:
        deadline = time.monotonic() + 300
        while "stage 0" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # steps are running
        for pid in _descendants(proc.pid):
            try:
                if b"RANK=1" in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                    stopped = pid
            except OSError:
                pass
        if stopped is not None:
            os.kill(stopped, signal.SIGSTOP)
            proc.wait(timeout=300)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            if stopped is not None:
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.read_text()

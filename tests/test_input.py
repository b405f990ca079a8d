"""The input pipeline around the loader: decode scale, worker settings, normalisation on the device.

References: the same loader with the other setting (a setting that must not change the data
must not), float64 arithmetic for the normalisation, and hand-set CPU counts.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFilter

from clipa.config import CLIP_MEAN, CLIP_STD, DataConfig
from clipa.data import build_train_loader
from clipa.runtime import default_workers
from clipa.data.transforms import normalise
from conftest import write_tar


def zero_tokens(captions: list[str]) -> torch.Tensor:
    return torch.zeros(len(captions), 4, dtype=torch.long)


def shards(root: Path, side: int, n: int = 2, per: int = 6) -> str:
    """``n`` shards of ``per`` blurred-noise JPEGs, ``side`` x 3/4 ``side`` px."""
    g = torch.Generator().manual_seed(side)
    for s in range(n):
        members = []
        for i in range(per):
            noise = torch.randint(0, 256, (side * 3 // 4, side, 3), generator=g, dtype=torch.uint8)
            out = io.BytesIO()
            Image.fromarray(noise.numpy()).filter(ImageFilter.BLUR).save(out, "JPEG", quality=90)
            members += [(f"k{s}_{i}.jpg", out.getvalue()), (f"k{s}_{i}.txt", f"photo {s} {i}".encode())]
        write_tar(root / f"{side}-{s}.tar", members)
    return f"{root}/{side}-{{0..{n - 1}}}.tar"


def batches(data: DataConfig, size: int, n: int, batch: int = 4) -> list[dict]:
    loader = build_train_loader(dataclasses.replace(data, workers=1), size, batch, zero_tokens, seed=3)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out
    raise AssertionError("the loader ended")


def test_per_crop_decoding_draws_the_same_crops(tmp_path):
    """Where no reduced scale is possible (small sources) per-crop and worst-crop decoding are
    the same pixels: the crop is drawn from the same seeded RNG, in the same order, before
    the colour jitter. On large sources the data (keys, order) stays the same too."""
    small = shards(tmp_path, 64)
    augment = {"color_jitter": (0.4, 0.4, 0.4, 0.1), "grayscale_prob": 0.3, "workers": 0}
    per_crop = batches(DataConfig(source=small, **augment), 32, 3)
    worst = batches(DataConfig(source=small, decode_scale="worst_crop", **augment), 32, 3)
    for a, b in zip(per_crop, worst):
        assert a["keys"] == b["keys"] and torch.equal(a["images"], b["images"])
    large = shards(tmp_path, 512)
    per_crop = batches(DataConfig(source=large, workers=0), 48, 3)
    worst = batches(DataConfig(source=large, decode_scale="worst_crop", workers=0), 48, 3)
    assert [b["keys"] for b in per_crop] == [b["keys"] for b in worst]
    assert not all(torch.equal(a["images"], b["images"]) for a, b in zip(per_crop, worst))  # other scales
    assert all(b["images"].shape == (4, 3, 48, 48) and b["images"].dtype == torch.uint8 for b in per_crop)


def test_persistent_workers_give_the_same_epochs(tmp_path):
    """Workers kept alive across epochs replay exactly what fresh workers per epoch give."""
    source = shards(tmp_path, 40, n=3, per=5)
    common = {"source": source, "workers": 2, "shuffle_buffer": 4, "prefetch_factor": 2}
    kept = batches(DataConfig(**common, persistent_workers=True), 24, 9, batch=3)  # 4 batches an epoch
    fresh = batches(DataConfig(**common, persistent_workers=False), 24, 9, batch=3)
    assert [b["keys"] for b in kept] == [b["keys"] for b in fresh]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(kept, fresh))
    assert len({k for b in kept[:4] for k in b["keys"]}) == 12  # one epoch: every usable sample once


def test_default_workers_follow_the_cores_per_process(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 16  # 31, capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 3  # 32 cores / 8 processes, one for the training loop
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers() == 1


def test_normalise_equals_the_float64_reference_on_any_dtype():
    x = torch.randint(0, 256, (3, 3, 7, 5), dtype=torch.uint8)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(3, 1, 1)
    ref = (x.double() / 255 - mean) / std
    got = normalise(x, CLIP_MEAN, CLIP_STD)
    assert got.dtype == torch.float32 and (got.double() - ref).abs().max() < 1e-6
    assert x.dtype == torch.uint8  # the batch itself is left alone
    half = normalise(x, CLIP_MEAN, CLIP_STD, torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, got.to(torch.bfloat16))
    assert torch.equal(normalise(x[0], CLIP_MEAN, CLIP_STD), got[0])  # one image as well as a batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_normalise_on_the_gpu_equals_the_cpu():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).pin_memory()
    on_gpu = normalise(x.to("cuda", non_blocking=True), CLIP_MEAN, CLIP_STD)
    assert on_gpu.device.type == "cuda" and (on_gpu.cpu() - normalise(x, CLIP_MEAN, CLIP_STD)).abs().max() < 1e-6


# ----------------------------------------------------------------------------- data.decode: cuda


def test_device_decoding_path_equals_the_cpu_path(tmp_path, monkeypatch):
    """The GPU path's code (bytes from the workers, batched ``decode_jpeg``, crop, resize and
    jitter on the device) run on the CPU device gives the CPU loader's pixels exactly, where
    neither path can use a reduced scale; a PNG among the JPEGs is decoded by the worker."""
    import clipa.data.loader as loader_module
    from clipa.data.decode import DeviceDecoder

    source = shards(tmp_path, 64)
    members = []
    for i in range(4):
        out = io.BytesIO()
        Image.new("RGB", (70, 50), (40 * i, 90, 200)).save(out, "PNG")
        members += [(f"p{i}.png", out.getvalue()), (f"p{i}.txt", b"a flat colour")]
    write_tar(tmp_path / "png.tar", members)
    source += f"::{tmp_path}/png.tar"
    monkeypatch.setattr(loader_module, "DeviceDecoder", lambda size, data, device: DeviceDecoder(size, data, "cpu"))
    augment = {"color_jitter": (0.4, 0.4, 0.4, 0.1), "grayscale_prob": 0.3, "workers": 2}
    on_device = batches(DataConfig(source=source, decode="cuda", **augment), 32, 4)
    on_cpu = batches(DataConfig(source=source, **augment), 32, 4)
    assert any(k.startswith("p") for b in on_device for k in b["keys"])
    for a, b in zip(on_device, on_cpu):
        assert a["keys"] == b["keys"] and a["images"].shape == (4, 3, 32, 32)
        assert torch.equal(a["images"], b["images"])


def test_device_decoding_counts_what_no_codec_decodes():
    from clipa.data.decode import DeviceDecoder

    good = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good, "JPEG")
    broken = bytearray(b"\xff\xd8" + bytes(100) + b"\xff\xd9")  # start and end markers, nothing else
    decoder = DeviceDecoder(16, DataConfig(), "cpu")
    items = [torch.frombuffer(bytearray(good.getvalue()), dtype=torch.uint8),
             torch.frombuffer(broken, dtype=torch.uint8), torch.full((3, 16, 16), 7, dtype=torch.uint8)]
    out = decoder(items, [1, 2, 3])
    assert out.shape == (3, 3, 16, 16) and (out[2] == 7).all()
    assert out[0].float().mean() > 50
    assert decoder.skipped == {"corrupt_image": 1} and (out[1] == 0).all()  # counted, left black


def test_device_decoding_without_a_gpu_or_codec_is_one_line(tmp_path, monkeypatch):
    source = shards(tmp_path, 40, n=1, per=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^data.decode: cuda needs a CUDA GPU, and torch sees none"):
            build_train_loader(DataConfig(source=source, decode="cuda", workers=1), 32, 2, zero_tokens, seed=0)
    import clipa.data.decode as decode_module

    def no_codec(*args, **kwargs):
        raise RuntimeError("nvjpeg is not available in this build\nmore detail")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(decode_module, "decode_jpeg", no_codec)
    with pytest.raises(ValueError) as e:
        build_train_loader(DataConfig(source=source, decode="cuda", workers=1), 32, 2, zero_tokens, seed=0)
    assert str(e.value) == ("data.decode: cuda: torchvision cannot decode JPEGs on cuda here "
                            "(nvjpeg is not available in this build); use data.decode=cpu")


# ----------------------------------------------------------------------------- a stage's own data


def test_a_stage_with_its_own_data_source_trains(tmp_path, monkeypatch):
    """A low-resolution stage reads shards made by ``clipa data resize``; the next stage reads
    the run's originals. Each stage's loader is built on its own source, and the run trains."""
    import clipa.train.trainer as trainer_module
    from clipa.config import StageConfig, from_dict, load_config
    from clipa.data.resize import resize
    from clipa.train.trainer import Trainer

    original = shards(tmp_path, 64, n=2, per=8)
    small = resize(original, tmp_path / "small", size=20, progress=False)["output"] + "/64-{0..1}.tar"
    tiny = ("model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, "
            "head_width: 32}, text: {width: 64, heads: 2, layers: 1}}")
    cfg = load_config(None, [tiny, "train.progress=false", "train.threads=1", f"train.output_dir={tmp_path}/run",
                             f"data.source={original}", "data.workers=0", "data.num_samples=16", "eval.every=0",
                             "stage.samples=32", "stage.batch_size=8", "stage.warmup=1", "stage.text_length=8",
                             f"stage.data.source={small}"])
    cfg.stages.append(from_dict(StageConfig, {"name": "full", "image_size": 24, "samples": 16, "batch_size": 8,
                                              "warmup": 1, "text_length": 8}))
    read = []
    real = trainer_module.build_train_loader

    def spy(data, image_size, *args, **kwargs):
        read.append((data.source, image_size))
        return real(data, image_size, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "build_train_loader", spy)
    Trainer(cfg).fit()
    assert read == [(small, 16), (original, 24)]


def test_each_step_reports_how_long_it_waited_for_data(tmp_path, monkeypatch):
    """A loader that takes 50 ms a batch makes every step wait at least that long, and the
    progress bar and TensorBoard get the figure (``data_wait``, ``train/data_wait_s``)."""
    import time

    import clipa.train.trainer as trainer_module
    from clipa.config import load_config
    from clipa.train.trainer import Trainer

    real = trainer_module.build_train_loader

    class Slow:
        def __init__(self, loader):
            self.loader = loader
            self.state_dict, self.stats, self.close = loader.state_dict, loader.stats, loader.close

        def __iter__(self):
            for batch in self.loader:
                time.sleep(0.05)
                yield batch

    monkeypatch.setattr(trainer_module, "build_train_loader", lambda *a, **k: Slow(real(*a, **k)))
    reported = []
    original = Trainer._report

    def record(self, progress, plan, step, lr, rate, waited, loader):
        reported.append(waited)
        return original(self, progress, plan, step, lr, rate, waited, loader)

    monkeypatch.setattr(Trainer, "_report", record)
    tiny = ("model_overrides={embed_dim: 32, vision: {image_size: 16, patch_size: 4, width: 64, layers: 1, "
            "head_width: 32}, text: {width: 64, heads: 2, layers: 1}}")
    cfg = load_config(None, [tiny, "train.progress=false", "train.threads=1", f"train.output_dir={tmp_path}",
                             "stage.samples=96", "stage.batch_size=32", "stage.warmup=1", "train.log_every=1"])
    Trainer(cfg).fit()
    assert len(reported) == 3 and min(reported) >= 0.05
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.*")).parent))
    events.Reload()
    assert [round(e.value, 2) >= 0.05 for e in events.Scalars("train/data_wait_s")] == [True] * 3

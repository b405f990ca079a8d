"""The data pipeline: tar reading, sources, bad-sample accounting, transforms, tools.

References: Python's ``tarfile`` (archive contents), OpenCLIP 3.3.0's ``image_transform``
(pixel-exact transforms), and hand-built shards whose every bad sample is known.
Resume and rank/worker splitting are in test_data_resume.py.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipa
from clipa.config import CLIP_MEAN, CLIP_STD, DataConfig, PreprocessConfig, TextReductionConfig, load_config
from clipa.data import (
    EmptySourceError,
    REASONS,
    build_eval_transform,
    build_train_loader,
    build_train_transform,
)
from clipa.data.samples import DecodeOptions, captions_of, decode_image
from clipa.data.sources import load_source
from clipa.data.tar import ShardError, iter_groups, iter_members
from clipa.data.transforms import draft_size, normalise, train_pixels
from clipa.reduction.text import CaptionTokenizer
from conftest import bomb_png, corrupt_header, image_bytes, write_tar

# ----------------------------------------------------------------------------- shard builders


def good(key: str, seed: int) -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", image_bytes(seed)), (f"{key}.txt", f"a photo number {seed}".encode())]


def good_shards(root: Path, shards: int, per_shard: int, prefix: str = "s") -> str:
    """``shards`` clean shards of ``per_shard`` samples; keys ``{prefix}{shard}_{i}``."""
    for s in range(shards):
        members = []
        for i in range(per_shard):
            members += good(f"{prefix}{s}_{i}", s * 1000 + i)
        write_tar(root / f"{prefix}-{s}.tar", members)
    return str(root / f"{prefix}-{{0..{shards - 1}}}.tar")


def bad_data(root: Path) -> tuple[str, set[str], dict[str, int]]:
    """Shards with every kind of bad sample among good ones: (source, good keys, expected counts)."""
    truncated_jpeg = image_bytes(7)
    truncated_jpeg = truncated_jpeg[: len(truncated_jpeg) // 2]
    write_tar(root / "bad-0.tar", good("a0", 1) + good("a1", 2) + good("a2", 3) + [
        ("a3.jpg", truncated_jpeg), ("a3.txt", b"truncated image"),
        ("a4.jpg", b"\x00not an image at all" * 20), ("a4.txt", b"garbage image"),
        ("a5.jpg", b""), ("a5.txt", b"zero-byte image"),
        ("a6.png", bomb_png()), ("a6.txt", b"decompression bomb"),
    ] + good("a7", 4))
    captions = {"captions": ["first caption", "second caption", "third caption"]}
    write_tar(root / "bad-1.tar", good("b0", 5) + [
        ("b1.jpg", image_bytes(6)),  # no caption at all
        ("b2.jpg", image_bytes(7)), ("b2.txt", b"  \n "),
        ("b3.jpg", image_bytes(8)), ("b3.txt", b"caf\xe9 latin-1"),
        ("b4.txt", b"a caption without an image"),
        ("b5.webp", image_bytes(9, "WEBP")), ("b5.json", json.dumps(captions).encode()),
        ("b6.png", image_bytes(10, "PNG")), ("b6.txt", b"ok"), ("b6.json", b"{\"captions\": [\"\xff\xfe\"]}"),
    ] + good("b7", 11))
    # truncated inside b-sample 4's image: c0..c3 survive, c4 (in progress) and c5 are lost
    write_tar(root / "bad-2.tar", [m for i in range(6) for m in good(f"c{i}", 20 + i)])
    data = (root / "bad-2.tar").read_bytes()
    cut = data.index(b"c4.jpg") + 512 + 100
    (root / "bad-2.tar").write_bytes(data[:cut])
    # a corrupt header (the one of d3.jpg): the reader resumes at d3.txt; only d3 is lost
    write_tar(root / "bad-3.tar", [m for i in range(6) for m in good(f"d{i}", 30 + i)])
    corrupt_header(root / "bad-3.tar", "d3.jpg")
    # bad-4.tar does not exist: the brace pattern names an unreadable shard
    write_tar(root / "pipe.tar", good("e0", 40) + good("e1", 41))
    source = (f"{root}/bad-{{0..4}}.tar::pipe:cat {root}/pipe.tar::pipe:cat {root}/missing.tar")
    keys = {"a0", "a1", "a2", "a7", "b0", "b5", "b7", "c0", "c1", "c2", "c3", "d0", "d1", "d2", "d4", "d5",
            "e0", "e1"}
    expected = {"corrupt_image": 2, "empty_image": 1, "decompression_bomb": 1, "missing_caption": 1,
                "empty_caption": 1, "bad_text": 2, "missing_image": 1, "corrupt_shard": 2, "unreadable_shard": 2}
    return source, keys, expected


def zero_tokens(captions: list[str]) -> torch.Tensor:
    return torch.zeros(len(captions), 4, dtype=torch.long)


def epochs(loader, n: int) -> list[list[dict]]:
    """The batches of the loader's next ``n`` (one-pass) epochs, from one iterator. It stops at
    the first batch after them, so the finished epochs' skip counts are ``state_dict()["skipped"]``."""
    out: list[list[dict]] = [[] for _ in range(n)]
    start = loader.epoch
    for batch in loader:
        if loader.epoch - start == n:
            break
        out[loader.epoch - start].append(batch)
    return out


def one_epoch(loader) -> list[dict]:
    return epochs(loader, 1)[0]


# ----------------------------------------------------------------------------- tar reader


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_match_tarfile(tmp_path, fmt):
    long_dir = "d" * 120  # beyond ustar's 100-character name field in GNU and pax archives
    names = ["x/a.jpg", "x/a.txt", f"{long_dir}/b.cls", "c.json", "__meta__"]
    if fmt == tarfile.USTAR_FORMAT:
        names[2] = "y" * 90 + "/b.cls"  # ustar splits it into prefix + name
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes(range(i * 7 % 256)) * (i + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    with tarfile.open(path) as tar:
        reference = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    with open(path, "rb") as f:
        ours = [(name, read()) for name, read in iter_members(f)]
    assert ours == reference


def test_tar_groups_keep_stop_and_gzip(tmp_path):
    members = []
    for i in range(5):
        members += good(f"k{i}", i)
    plain = write_tar(tmp_path / "g.tar", members)
    (tmp_path / "g.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with open(plain, "rb") as f:
        assert [i for i, _ in iter_groups(f, lambda i: i % 2 == 0)] == [0, 2, 4]
    with open(plain, "rb") as f:
        got = list(iter_groups(f, lambda i: True, stop=2))
    assert [g["__key__"] for _, g in got] == ["k0", "k1"]
    assert got[1][1]["jpg"] == image_bytes(1)
    source = load_source(str(tmp_path / "g.tar.gz"))
    assert [g["__key__"] for _, g in source.read(0)] == [f"k{i}" for i in range(5)]


def test_tar_damage_raises_instead_of_ending_quietly(tmp_path):
    path = write_tar(tmp_path / "t.tar", good("k0", 0) + good("k1", 1))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512  # where the end-of-archive blocks start
    for cut in [700, last.offset + 100, end]:
        with pytest.raises(ShardError, match="truncated") as e:
            list(iter_members(io.BytesIO(data[:cut])))
        assert e.value.reason == "corrupt_shard"
    bad = bytearray(data)
    bad[data.index(b"k0.txt") + 1] ^= 0xFF  # the second member's header
    with pytest.raises(ShardError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(bad))))
    # Python's tarfile (stream mode) takes the same damage for the end of the archive
    with tarfile.open(fileobj=io.BytesIO(bytes(bad)), mode="r|") as tar:
        assert [m.name for m in tar] == ["k0.jpg"]
    # told where to report damage, the reader resumes at the next valid header instead
    damage: list[str] = []
    assert [n for n, _ in iter_members(io.BytesIO(bytes(bad)), damage.append)] == ["k0.jpg", "k1.jpg", "k1.txt"]
    assert damage == ["corrupt tar header after k0.jpg: skipped 1024 bytes to the next valid header"]


def _groups(path: Path, stop: int | None = None) -> list[tuple[int, str, str]]:
    """(index, key, "damaged" or the sorted extensions) of every group of a shard."""
    with open(path, "rb") as f:
        return [(i, g["__key__"], "damaged" if "__damaged__" in g else ",".join(sorted(set(g) - {"__key__"})))
                for i, g in iter_groups(f, lambda i: True, stop)]


def test_a_corrupt_header_costs_only_the_sample_it_damages(tmp_path):
    """Hand-worked: each case names the header made corrupt and what the reader must give."""
    five = [m for i in range(5) for m in good(f"k{i}", i)]
    whole = [(i, f"k{i}", "jpg,txt") for i in range(5)]

    def damaged(*names: str) -> Path:
        path = write_tar(tmp_path / "t.tar", five + [("k5.jpg", image_bytes(5)), ("k5.txt", b"x"), ("k5.json", b"{}")])
        for name in names:
            corrupt_header(path, name)
        return path

    tail = [(5, "k5", "jpg,json,txt")]
    # an image header: k2 keeps only its caption, so k2 is the damaged sample
    assert _groups(damaged("k2.jpg")) == whole[:2] + [(2, "k2", "damaged")] + whole[3:] + tail
    # a caption header: k2 keeps only its image
    assert _groups(damaged("k2.txt")) == whole[:2] + [(2, "k2", "damaged")] + whole[3:] + tail
    # the first header of the shard
    assert _groups(damaged("k0.jpg")) == [(0, "k0", "damaged")] + whole[1:] + tail
    # a whole sample (two headers in a row): one entry stands for the lost stretch
    assert _groups(damaged("k2.jpg", "k2.txt")) == whole[:2] + [(2, "k3", "jpg,txt"), (3, "k3#damage", "damaged"),
                                                                (4, "k4", "jpg,txt"), (5, "k5", "jpg,json,txt")]
    # a member no one needs: k5 stays whole, the stretch is still counted once
    assert _groups(damaged("k5.json")) == whole + [(5, "k5", "jpg,txt"), (6, "k5#damage", "damaged")]
    # indices stay those of a full read when reading stops early
    assert _groups(damaged("k2.jpg"), stop=3) == whole[:2] + [(2, "k2", "damaged")]
    # not a tar at all: one damaged entry, no sample
    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all" * 40)
    assert _groups(tmp_path / "junk.tar") == [(0, "#damage", "damaged")]


# ----------------------------------------------------------------------------- bad data


def test_every_kind_of_bad_sample_is_skipped_and_counted_exactly(tmp_path, caplog):
    source, keys, expected = bad_data(tmp_path)
    # the test covers every reason there is but missing_label (classification evaluation sets:
    # test_eval_data.py)
    assert set(expected) == set(REASONS) - {"missing_label"}
    for workers in (0, 2):
        data = DataConfig(source=source, workers=workers, shuffle_buffer=4)
        loader = build_train_loader(data, 16, 1, zero_tokens, seed=0)
        with caplog.at_level(logging.WARNING, logger="clipa.data"):
            seen = [k for b in one_epoch(loader) for k in b["keys"]]
        assert sorted(seen) == sorted(keys), workers
        # the finished epoch's counts (stats() already includes what epoch 1 has read ahead)
        assert loader.state_dict()["skipped"] == expected, workers
        assert all(loader.stats()[k] >= v for k, v in expected.items())
    epoch_lines = [r.getMessage() for r in caplog.records if "data epoch 0 done" in r.getMessage()]
    assert len(epoch_lines) == 2
    for line in epoch_lines:
        assert line.endswith("skipped so far: " + ", ".join(f"{k}={v}" for k, v in sorted(expected.items())))
    assert "skipped decompression_bomb" in caplog.text  # the in-process run's sample-level log


def test_bad_samples_counted_through_a_training_run(tmp_path, caplog):
    """A short CPU training run over the bad shards completes; its epoch log line and the
    checkpointed loader position give the exact count per reason."""
    pytest.importorskip("clipa.train.trainer")
    from clipa.config import RunConfig, StageConfig, TrainConfig
    from clipa.train.trainer import Trainer

    source, keys, expected = bad_data(tmp_path)
    cfg = RunConfig(
        model="clipa-tiny",
        data=DataConfig(source=source, workers=2, shuffle_buffer=4),
        stages=[StageConfig(samples=2 * 10, batch_size=2, image_size=16, warmup=1)],
        train=TrainConfig(device="cpu", output_dir=str(tmp_path / "run"), progress=False, threads=1),
    )
    with caplog.at_level(logging.INFO, logger="clipa.data"):
        Trainer(cfg).fit()  # 10 steps of 2: one epoch has at most 7, so this crosses into epoch 1
    line = next(r.getMessage() for r in caplog.records if "data epoch 0 done" in r.getMessage())
    assert line.endswith("skipped so far: " + ", ".join(f"{k}={v}" for k, v in sorted(expected.items())))
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["loader"]["skipped"] == expected  # counts of the finished epoch 0


def test_a_source_without_usable_samples_fails_clearly(tmp_path):
    write_tar(tmp_path / "empty-0.tar", [("x.jpg", b""), ("x.txt", b"zero-byte image")])
    (tmp_path / "empty-1.tar").write_bytes(b"not a tar file at all" * 40)
    source = f"{tmp_path}/empty-{{0..1}}.tar"
    loader = build_train_loader(DataConfig(source=source, workers=1), 16, 1, zero_tokens, seed=0)
    with pytest.raises(EmptySourceError, match="no complete batch of 1 .* corrupt_shard=1, empty_image=1"):
        next(iter(loader))
    endless = build_train_loader(DataConfig(source=source, num_samples=10, workers=1), 16, 1, zero_tokens, seed=0)
    with pytest.raises(EmptySourceError, match="without one usable sample"):
        next(iter(endless))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        build_train_loader(DataConfig(source=f"{tmp_path}/nothing-{{0..3}}.tar", workers=1), 16, 1, zero_tokens, seed=0)


# ----------------------------------------------------------------------------- sources


def _write_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image_bytes(i, "PNG" if name.endswith(".png") else "JPEG"))


def test_csv_tsv_and_folder_sources(tmp_path):
    _write_images(tmp_path / "img", ["a.jpg", "b.png", "sub/c.jpg"])
    (tmp_path / "train.csv").write_text(
        "filepath,title\nimg/a.jpg,a red thing\nimg/b.png,\"a caption, with a comma\"\n"
        "img/missing.jpg,no image file\nimg/sub/c.jpg,\n")
    (tmp_path / "train.tsv").write_text("path\ttext\nimg/a.jpg\tfrom a tsv\n")
    csv_loader = build_train_loader(DataConfig(source=str(tmp_path / "train.csv"), workers=1), 16, 1, zero_tokens, seed=0)
    assert sorted(k for b in one_epoch(csv_loader) for k in b["keys"]) == ["img/a.jpg#0", "img/b.png#1"]
    assert csv_loader.state_dict()["skipped"] == {"empty_caption": 1, "missing_image": 1}
    tsv = DataConfig(source=str(tmp_path / "train.tsv"), csv_image_key="path", csv_caption_key="text", workers=1)
    assert [b["keys"] for b in one_epoch(build_train_loader(tsv, 16, 1, zero_tokens, seed=0))] == [["img/a.jpg#0"]]
    with pytest.raises(ValueError, match="no column 'filepath'"):
        build_train_loader(DataConfig(source=str(tmp_path / "train.tsv"), workers=1), 16, 1, zero_tokens, seed=0)

    (tmp_path / "img" / "captions.json").write_text(json.dumps({"a.jpg": ["one", "two"], "b.png": "three"}))
    folder = build_train_loader(DataConfig(source=str(tmp_path / "img"), workers=1), 16, 1, zero_tokens, seed=0)
    assert sorted(k for b in one_epoch(folder) for k in b["keys"]) == ["a", "b"]
    assert folder.state_dict()["skipped"] == {"missing_caption": 1}  # sub/c.jpg has none
    rows = load_source(str(tmp_path / "img")).tables[str(tmp_path / "img")]
    assert [(r.key, r.captions) for r in rows] == [("a", ("one", "two")), ("b", ("three",)), ("sub/c", ())]


def test_joined_sources_weights_and_caption_choice(tmp_path):
    a = good_shards(tmp_path, 2, 3, "a")
    members = []
    for i in range(4):
        members += [(f"j{i}.jpg", image_bytes(i)),
                    (f"j{i}.json", json.dumps({"captions": [f"c{n}" for n in range(5)]}).encode())]
    write_tar(tmp_path / "j.tar", members)
    picked = []

    def record(captions):
        picked.extend(captions)
        return zero_tokens(captions)

    first = DataConfig(source=f"{a}::{tmp_path}/j.tar", caption_choice="first", workers=0)  # record: in process
    keys = [k for b in one_epoch(build_train_loader(first, 16, 1, record, seed=0)) for k in b["keys"]]
    assert len(keys) == 10 and {p for k, p in zip(keys, picked) if k.startswith("j")} == {"c0"}
    picked.clear()
    epochs(build_train_loader(DataConfig(source=f"{tmp_path}/j.tar", workers=0), 16, 1, record, seed=0), 3)
    assert len(set(picked)) > 2  # a caption drawn per sample and epoch

    with pytest.raises(ValueError, match="needs data.resampled"):
        build_train_loader(DataConfig(source=f"{a}::{tmp_path}/j.tar", weights=[1, 2], workers=1), 16, 1, zero_tokens, seed=0)
    weighted = DataConfig(source=f"{a}::{tmp_path}/j.tar", weights=[1.0, 0.0], resampled=True, num_samples=60, workers=1)
    loader = iter(build_train_loader(weighted, 16, 4, zero_tokens, seed=0))
    drawn = Counter(k[0] for _ in range(15) for k in next(loader)["keys"])
    assert drawn == {"a": 60}  # weight 0: the j shard is never drawn


# ----------------------------------------------------------------------------- images and transforms


def test_decompression_bomb_guard_reads_only_the_header():
    from clipa.data.samples import BadSample

    with pytest.raises(BadSample) as e:
        decode_image(bomb_png(), DecodeOptions().max_image_pixels)
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(BadSample) as e:
        decode_image(image_bytes(0, size=(40, 32)), max_pixels=40 * 32 - 1)
    assert e.value.reason == "decompression_bomb"
    assert decode_image(image_bytes(0, size=(40, 32)), max_pixels=40 * 32).size == (40, 32)


def test_jpeg_draft_keeps_enough_pixels_for_the_smallest_crop():
    assert draft_size(112, 0.4) == 205
    big = image_bytes(0, size=(1000, 800))
    image = decode_image(big, 10**9, draft_size(112, 0.4))
    assert image.size == (500, 400)  # libjpeg's 1/2 scale: the short side stays >= 205
    assert decode_image(big, 10**9, 101).size == (250, 200)


def _pil(seed: int, size=(97, 61), mode="RGB") -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(seed, "PNG", size))).convert(mode)


def _real_photo() -> Image.Image | None:
    """The first Flickr8k test photo from the shared data sets, when they are there."""
    from conftest import SHARED

    shard = SHARED / "flickr8k" / "test-0.tar"
    if not shard.exists():
        return None
    with open(shard, "rb") as f:
        _, first = next(iter_groups(f, lambda i: True, stop=1))
    return Image.open(io.BytesIO(first["jpg"]))


def test_transforms_match_openclip_pixel_for_pixel():
    """The one evaluation transform equals OpenCLIP's exactly (tolerance 0) on every image mode
    (palette images resize with nearest and RGBA ones with premultiplied alpha before the RGB
    conversion, so converting first would differ); training matches to 1e-6 on RGB, greyscale and
    opaque RGBA images (ToDtype scales by 1/255 where ToTensor divides)."""
    pytest.importorskip("open_clip")
    from open_clip.transform import AugmentationCfg, image_transform

    ref_eval = image_transform(48, is_train=False)
    ref_train = image_transform(48, is_train=True, aug_cfg=AugmentationCfg(scale=(0.4, 1.0)))
    ours_train = build_train_transform(48, DataConfig(), PreprocessConfig())
    rgba = Image.fromarray(torch.randint(0, 256, (61, 97, 4), generator=torch.Generator().manual_seed(3),
                                         dtype=torch.uint8).numpy(), "RGBA")  # alpha varies per pixel
    images = [_pil(0), _pil(1, mode="L"), _pil(2, mode="RGBA"), _pil(4, mode="P"), _pil(5).quantize(16), rgba,
              _pil(6, size=(20, 30))]  # smaller than the crop: upscaled
    if (photo := _real_photo()) is not None:
        images.append(photo)
    for image in images:
        torch.testing.assert_close(build_eval_transform(48, PreprocessConfig())(image), ref_eval(image), atol=0, rtol=0)
    # a model's own preprocessing (a CLIPA tag's: ImageNet statistics, bilinear; each resize mode)
    stats = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    for mode in ("shortest", "longest", "squash"):
        ours = build_eval_transform(48, PreprocessConfig(**stats, interpolation="bilinear", resize_mode=mode))
        theirs = image_transform(48, is_train=False, **stats, resize_mode=mode, interpolation="bilinear")
        for image in images:
            torch.testing.assert_close(ours(image), theirs(image), atol=0, rtol=0, msg=f"{mode} {image.size}")
    for seed, image in enumerate(images[:3]):
        torch.manual_seed(seed)
        want = ref_train(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(ours_train(image), want, atol=1e-6, rtol=0)


def test_loader_pixels_follow_the_public_transform():
    """The loader's uint8 tensor path crops exactly where the PIL path does (same seed);
    torch's and PIL's bicubic kernels differ by a grey level or two."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    cfg = DataConfig(grayscale_prob=0.5, color_jitter=(0.4, 0.4, 0.4, 0.1))
    for seed in range(4):
        image = _pil(seed, size=(80, 64))
        torch.manual_seed(seed)
        want = build_train_transform(32, cfg, PreprocessConfig())(image)
        torch.manual_seed(seed)
        got = normalise(train_pixels(32, cfg)(pil_to_tensor(image))[None], CLIP_MEAN, CLIP_STD)[0]
        assert got.shape == want.shape == (3, 32, 32)
        assert (got - want).abs().mean() < 0.03
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(normalise(x, CLIP_MEAN, CLIP_STD), ref, atol=1e-5, rtol=0)


def test_loader_batches_are_uint8_images(tmp_path):
    """Loaders hand over uint8 (the trainer normalises on its device)."""
    source = good_shards(tmp_path, 2, 4)
    loader = build_train_loader(DataConfig(source=source, workers=1), 24, 3, zero_tokens, seed=0)
    batch = next(iter(loader))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (3, 3, 24, 24)
    assert batch["text"].shape == (3, 4) and len(batch["keys"]) == 3
    images = normalise(batch["images"], CLIP_MEAN, CLIP_STD)
    assert images.dtype == torch.float32 and -2.0 < images.min() and images.max() < 2.7


_WORKERS_UNDER = """
import sys
import torch
import torch.multiprocessing as mp
from clipa import get_tokenizer
from clipa.config import DataConfig, TextReductionConfig
from clipa.data import build_train_loader
from clipa.reduction.text import CaptionTokenizer

if __name__ == "__main__":
    source, out = sys.argv[1], sys.argv[2]
    tokenize = CaptionTokenizer(get_tokenizer("ViT-B-32"), 5, TextReductionConfig("syntax"), seed=1)
    runs = {}
    for method in ("spawn", "fork"):
        mp.set_start_method(method, force=True)
        loader = build_train_loader(DataConfig(source=source, workers=2, shuffle_buffer=3), 16, 2, tokenize, seed=4)
        it = iter(loader)
        runs[method] = [next(it) for _ in range(6)]
    torch.save(runs, out)
"""


def test_two_loader_workers_under_spawn_with_syntax_text_masking(tmp_path):
    """The caption tokenizer and the rest of a worker's dataset pickle, so workers start under
    ``spawn`` (macOS, Windows) as under ``fork``: the same batches, and text rows equal to the
    syntax rule run in this process on each batch's captions."""
    source = good_shards(tmp_path, 4, 3)
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_UNDER)
    out = tmp_path / "batches.pt"
    proc = subprocess.run([sys.executable, str(script), source, str(out)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = torch.load(out, weights_only=True)
    tokenize = CaptionTokenizer(clipa.get_tokenizer("ViT-B-32"), 5, TextReductionConfig("syntax"), seed=1)
    assert len(runs["spawn"]) == len(runs["fork"]) == 6
    for spawned, forked in zip(runs["spawn"], runs["fork"]):
        assert spawned["keys"] == forked["keys"]
        assert torch.equal(spawned["images"], forked["images"]) and torch.equal(spawned["text"], forked["text"])
        # key s{shard}_{i} has the caption "a photo number {1000 * shard + i}"
        captions = [f"a photo number {1000 * int(k[1:].split('_')[0]) + int(k.split('_')[1])}"
                    for k in spawned["keys"]]
        assert torch.equal(spawned["text"], tokenize(captions))
    assert {k for b in runs["spawn"] for k in b["keys"]} == {f"s{s}_{i}" for s in range(4) for i in range(3)}


# ----------------------------------------------------------------------------- built-in sources


def test_digits_is_a_built_in_source_behind_the_same_loader_protocol():
    """build_train_loader serves ``digits`` like any source: uint8 images, the digits' own mean
    and std (0.5) declared in the source's record for the model trained on it, stats, a JSON
    state that continues exactly, and a state from another setup refused."""
    from clipa.data.builtin import BUILT_IN
    from clipa.data.loader import Loader

    assert BUILT_IN["digits"].preprocess.mean == BUILT_IN["digits"].preprocess.std == (0.5, 0.5, 0.5)
    loader = build_train_loader(DataConfig(source="digits"), 16, 8, zero_tokens, seed=3)
    assert isinstance(loader, Loader) and loader.stats() == {}
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(loader.state_dict()))
    rest = [next(it) for _ in range(3)]
    levels = first[0]["images"]
    assert levels.dtype == torch.uint8 and levels.shape == (8, 3, 16, 16)
    torch.testing.assert_close(normalise(levels, (0.5,) * 3, (0.5,) * 3), levels / 127.5 - 1)
    assert torch.equal(levels[:, 0], levels[:, 2])  # grey: R = G = B
    assert levels.min() == 0 and levels.max() > 200  # black background, white strokes
    resumed = iter(build_train_loader(DataConfig(source="digits"), 16, 8, zero_tokens, seed=3, state=state))
    for want in rest:
        got = next(resumed)
        assert got["keys"] == want["keys"] and torch.equal(got["images"], want["images"])
    with pytest.raises(ValueError, match="global_batch: saved 8, now 16"):
        build_train_loader(DataConfig(source="digits"), 16, 16, zero_tokens, seed=3, state=state)
    with pytest.raises(ValueError, match="loader state version"):
        build_train_loader(DataConfig(source="digits"), 16, 8, zero_tokens, seed=3, state={"epoch": 0, "offset": 8})


def test_digits_ranks_slice_the_one_process_batch():
    whole = next(iter(build_train_loader(DataConfig(source="digits"), 16, 8, zero_tokens, seed=0)))
    halves = [next(iter(build_train_loader(DataConfig(source="digits"), 16, 4, zero_tokens, seed=0, rank=r,
                                           world_size=2))) for r in (0, 1)]
    assert whole["keys"] == halves[0]["keys"] + halves[1]["keys"]
    assert torch.equal(whole["images"], torch.cat([h["images"] for h in halves]))


# ----------------------------------------------------------------------------- tools


def test_convert_inspect_and_train_on_the_same_folder(tmp_path, capsys):
    """The folder `clipa data convert` writes is a source as it stands: `clipa data inspect
    FOLDER` and a training run with data.source=FOLDER read every sample of it."""
    from clipa.cli import main
    from clipa.train.trainer import Trainer

    _write_images(tmp_path / "photos", [f"p{i}.jpg" for i in range(6)])
    (tmp_path / "photos" / "captions.json").write_text(json.dumps({f"p{i}.jpg": f"photo number {i}" for i in range(6)}))
    shards = tmp_path / "shards"
    assert main(["data", "convert", str(tmp_path / "photos"), "-o", str(shards), "--shard-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(shards)
    assert main(["data", "inspect", str(shards)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["shards"], report["usable"], report["skipped"]) == (2, 6, {})

    cfg = load_config(None, [f"data.source={shards}", "model=clipa-tiny", "stage.samples=8", "stage.batch_size=2",
                             "stage.image_size=16", "train.progress=false", f"train.output_dir={tmp_path / 'run'}",
                             "train.threads=1", "train.device=cpu"])
    Trainer(cfg).fit()
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["global_step"] == 4 and state["loader"]["skipped"] == {}
    assert state["loader"]["fingerprint"]["source"] == load_source(str(shards)).fingerprint()
    assert state["loader"]["epoch"] == 1  # 8 samples from 6: the whole folder was read once
    assert state["config"]["stages"][0]["name"] == "main"


def test_image_folder_with_caption_sidecars(tmp_path):
    """cat.jpg + cat.txt: the .txt holds the caption (the whole file, as in shards); a captions
    file, where there is one, wins for the images it lists; a .txt that is not UTF-8 is counted."""
    from clipa.data.tools import inspect

    folder = tmp_path / "pets"
    _write_images(folder, ["cat.jpg", "dog.jpg", "sub/owl.png", "nocaption.jpg", "bad.jpg"])
    (folder / "cat.txt").write_text("a cat on a sofa\n")
    (folder / "dog.txt").write_text("a dog in the snow")
    (folder / "sub" / "owl.txt").write_text("an owl at night")
    (folder / "bad.txt").write_bytes(b"\xff\xfe caption")
    report = inspect(str(folder))
    assert (report["usable"], report["skipped"]) == (3, {"bad_text": 1, "missing_caption": 1})

    def captions() -> dict:
        src = load_source(str(folder))
        return {raw["__key__"]: captions_of(raw) for _, raw in src.read(0) if raw["__key__"] not in ("bad", "nocaption")}

    assert captions() == {"cat": ["a cat on a sofa"], "dog": ["a dog in the snow"], "sub/owl": ["an owl at night"]}
    (folder / "captions.json").write_text(json.dumps({"cat.jpg": ["a tabby", "a cat"]}))
    assert captions()["cat"] == ["a tabby", "a cat"] and captions()["dog"] == ["a dog in the snow"]
    with pytest.raises(FileNotFoundError, match=r"\.txt file beside each image"):
        _write_images(tmp_path / "bare", ["x.jpg"])
        load_source(str(tmp_path / "bare"))


def test_csv_with_other_column_names_through_the_command_flags(tmp_path, capsys):
    """Custom columns are chosen with --image-key/--caption-key/--separator; a wrong one is one
    line naming the flag (not the training config's data.csv_* keys) and the columns there are."""
    from clipa.cli import main

    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    table = tmp_path / "list.csv"
    table.write_text("image;text\na.jpg;a red thing\nb.jpg;a blue thing\n")
    flags = ["--image-key", "image", "--caption-key", "text", "--separator", ";"]
    assert main(["data", "inspect", str(table), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] == 2
    assert main(["data", "convert", str(table), "-o", str(tmp_path / "out"), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2

    assert main(["data", "inspect", str(table), "--image-key", "image", "--separator", ";"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipa: error: ") and "\n" not in err
    assert "no column 'title' (columns: image, text)" in err and "--caption-key" in err and "data.csv" not in err
    assert main(["data", "inspect", str(table)]) == 2
    err = capsys.readouterr().err
    assert "no column 'filepath' (columns: image;text); set --image-key" in err and "--separator" in err
    with pytest.raises(ValueError, match="data.csv_caption_key"):  # training names its config keys
        load_source(str(table), image_key="image", separator=";")


def test_inspect_grid_keeps_a_visible_space_between_words(tmp_path):
    """The default font's space is 2 px at small sizes: captions in the grid read as one word.
    Measured on the picture: every gap between the ink of "I I I I" is at least 4 px wide."""
    from clipa.data.tools import _grid

    _grid([("I I I I", Image.new("RGB", (50, 50), "white"))], tmp_path / "g.png")
    band = np.asarray(Image.open(tmp_path / "g.png").convert("L"))[200:]
    ink = (band < 128).any(axis=0)
    edges = np.flatnonzero(np.diff(ink.astype(int)))  # starts and ends of inked columns
    gaps = edges[2::2] - edges[1:-1:2]
    assert len(gaps) == 3 and gaps.min() >= 4, gaps


def test_convert_then_inspect(tmp_path, capsys):
    from clipa.data.tools import convert, inspect

    folder = tmp_path / "photos"
    _write_images(folder, ["p0.jpg", "p1.png", "p2.jpg", "p3.jpg", "p4.jpg"])
    (folder / "p5.jpg").write_bytes(b"corrupt")
    (folder / "captions.tsv").write_text(
        "filepath\ttitle\np0.jpg\ta dog\np0.jpg\ta brown dog runs\np1.png\ttwo cats on a mat\n"
        "p2.jpg\tsky\np3.jpg\ta tree\np5.jpg\tbroken\n")
    report = convert(str(folder), tmp_path / "shards", shard_size=2)
    assert report == {"shards": 2, "samples": 4, "skipped": {"missing_caption": 1, "corrupt_image": 1}}
    assert json.loads((tmp_path / "shards" / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2}
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("000000000.json"))
    assert names == ["000000000.jpg", "000000000.txt", "000000000.json", "000000001.png", "000000001.txt",
                     "000000001.json"]
    assert meta == {"key": "p0", "captions": ["a dog", "a brown dog runs"]}

    report = inspect(f"{tmp_path}/shards/{{00000..00001}}.tar", grid=tmp_path / "grid.png")
    assert report["samples"] == report["usable"] == 4 and report["captions"] == 5
    assert report["caption_words"] == {"min": 1, "mean": 2.8, "median": 2, "p95": 5, "max": 5}  # 2 4 5 1 2
    assert Image.open(tmp_path / "grid.png").size == (2 * 200, 2 * (200 + 51))

    from clipa.cli import main

    assert main(["data", "inspect", str(tmp_path / "shards" / "00001.tar")]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] == 2

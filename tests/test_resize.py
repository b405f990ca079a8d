"""``clipa data resize``: same keys, captions and metadata, smaller images, resumable, damage counted.

References: Python's ``tarfile`` for the shards' contents, hand-built shards whose every bad
sample is known, and an interruption injected mid-shard.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clipa.cli import main
from clipa.data import resize as resize_module
from clipa.data.resize import output_name, resize
from conftest import corrupt_header, write_tar


def jpeg(seed: int, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB").rotate(seed * 7)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def sample(key: str, seed: int, size=(160, 120), ext: str = "jpg") -> list[tuple[str, bytes]]:
    meta = json.dumps({"key": key, "captions": [f"caption {seed}", f"other {seed}"], "width": size[0]}).encode()
    return [(f"{key}.{ext}", jpeg(seed, size, "PNG" if ext == "png" else "JPEG")),
            (f"{key}.txt", f"caption {seed}".encode()), (f"{key}.json", meta)]


def shards(root: Path, n: int = 3, per: int = 4) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        write_tar(root / f"{s:05d}.tar", [m for i in range(per) for m in sample(f"dir/k{s}_{i}", 10 * s + i)])
    return f"{root}/{{00000..{n - 1:05d}}}.tar"


def contents(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_resized_shards_keep_keys_captions_and_metadata(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    small = sample("small", 1, size=(50, 40))  # already below the size: bytes kept
    png = sample("png", 2, ext="png")  # re-encoded as JPEG, named .jpg
    write_tar(root / "00000.tar", sample("a", 0) + [("a.cls", b"7")] + small + png)
    report = resize(f"{root}/00000.tar", tmp_path / "out", size=64, quality=85)
    assert report == {"shards": 1, "resized_now": 1, "samples": 3, "skipped": {}, "output": str(tmp_path / "out")}
    before, after = contents(root / "00000.tar"), contents(tmp_path / "out" / "00000.tar")
    assert sorted(after) == sorted(["a.jpg", "a.txt", "a.json", "a.cls", "small.jpg", "small.txt", "small.json",
                                    "png.jpg", "png.txt", "png.json"])
    for name in after:
        if name.endswith((".txt", ".json", ".cls")) or name == "small.jpg":
            assert after[name] == before[name], name
    for key, source in (("a", "a.jpg"), ("png", "png.png")):
        image = Image.open(io.BytesIO(after[f"{key}.jpg"]))
        assert image.format == "JPEG" and image.size == (85, 64), key  # 160x120 -> short side 64
        original = Image.open(io.BytesIO(before[source])).convert("L").resize((85, 64))
        diff = sum(abs(a - b) for a, b in zip(image.convert("L").getdata(), original.getdata())) / (85 * 64)
        assert diff < 4  # the same picture
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"00000.tar": 3}


def test_damaged_samples_are_skipped_and_counted(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    truncated = jpeg(5, (160, 120))[:300]
    write_tar(root / "00000.tar", sample("g0", 0) + [("t.jpg", truncated), ("t.txt", b"cut"),
                                                    ("e.jpg", b""), ("e.txt", b"empty"),
                                                    ("n.jpg", jpeg(6, (160, 120)))] + sample("g1", 1))
    write_tar(root / "00001.tar", [m for i in range(4) for m in sample(f"h{i}", 10 + i)])
    corrupt_header(root / "00001.tar", "h3.jpg")  # h3 loses its image, h0-h2 are whole
    report = resize(f"{root}/{{00000..00002}}.tar", tmp_path / "out", size=64)  # 00002.tar does not exist
    assert report["samples"] == 5 and report["shards"] == 2
    assert report["skipped"] == {"corrupt_image": 1, "empty_image": 1, "missing_caption": 1, "corrupt_shard": 1,
                                 "unreadable_shard": 1}
    assert report["unreadable"] == [f"{root}/00002.tar"]
    assert {n.split(".")[0] for n in contents(tmp_path / "out" / "00001.tar")} == {"h0", "h1", "h2"}
    assert not (tmp_path / "out" / "00002.tar").exists()  # retried by the next run, not recorded


def test_interrupted_resize_resumes_without_duplicates_or_losses(tmp_path, monkeypatch):
    source = shards(tmp_path / "src", n=4, per=5)
    out = tmp_path / "out"
    real, calls = resize_module.shrink, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12:  # inside the third shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(resize_module, "shrink", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resize(source, out, size=64)
    assert sorted(json.loads((out / "resize.json").read_text())["shards"]) == ["00000.tar", "00001.tar"]
    assert (out / ".00002.tar.tmp").exists()  # the half-written shard never got its final name
    monkeypatch.setattr(resize_module, "shrink", real)
    report = resize(source, out, size=64)
    assert report["resized_now"] == 2 and report["samples"] == 20 and report["skipped"] == {}
    keys = [name.rsplit(".", 1)[0] for s in range(4) for name in contents(out / f"{s:05d}.tar") if name.endswith(".jpg")]
    assert sorted(keys) == sorted(f"dir/k{s}_{i}" for s in range(4) for i in range(5))  # each once
    assert not list(out.glob(".*.tmp"))
    assert resize(source, out, size=64)["resized_now"] == 0  # all done: nothing redone


def test_parallel_workers_write_the_same_shards(tmp_path):
    source = shards(tmp_path / "src", n=3, per=3)
    resize(source, tmp_path / "one", size=48)
    resize(source, tmp_path / "two", size=48, workers=2)
    for s in range(3):
        assert contents(tmp_path / "one" / f"{s:05d}.tar") == contents(tmp_path / "two" / f"{s:05d}.tar")


def test_cli_and_its_mistakes(tmp_path, capsys):
    source = shards(tmp_path / "src", n=2, per=2)
    assert main(["data", "resize", source, "--size", "64", "--output", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4
    assert main(["data", "resize", source, "--size", "96", "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"clipa: error: {tmp_path / 'out'}: holds a resize with size 64 (now 96); use another --output folder")
    assert main(["data", "resize", source, "--size", "64", "-o", str(tmp_path / "src")]) == 2
    assert "would overwrite the source shards" in capsys.readouterr().err
    assert main(["data", "resize", str(tmp_path / "nope-{0..3}.tar"), "--size", "64", "-o", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("clipa: error: data.source: no file matches")


def test_output_names():
    assert output_name("/data/laion/00012.tar") == "00012.tar"
    assert output_name("https://host/a/b/00012.tar.gz") == "00012.tar"
    assert output_name("pipe:aws s3 cp s3://bucket/shards/00007.tar -") == "00007.tar"
    with pytest.raises(ValueError, match="cannot tell the shard name"):
        output_name("pipe:cat stream")

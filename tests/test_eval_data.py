"""Evaluation data readers, ImageNet metadata, linear probe and the ``clipa eval`` command on tiny
synthetic data (no shared data needed), including damaged sets: every good sample is scored and
every damaged one counted by its reason."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipa
from clipa.cli import main
from clipa.config import PreprocessConfig
from clipa.data import imagenet
from clipa.data.eval_sets import (batches, caption_shards_set, clip_benchmark_set, image_folder_set, imagenet_set,
                                  open_data)
from clipa.data.transforms import build_eval_transform
from clipa.eval import linear_probe
from clipa.eval.linear_probe import holdout_split
from clipa.eval.runner import EvalOptions, evaluate_run, evaluate_set, result_record
from clipa.runtime import resolve_runtime
from clipa.tokenizer import tokenizer_for
from conftest import bomb_png, corrupt_header, write_samples


def options(batch_size: int) -> EvalOptions:
    """Evaluation in this process on the CPU, in fp32."""
    return EvalOptions(resolve_runtime("cpu", "fp32", 0), batch_size)


def eval_transform(size: int):
    """The evaluation transform of a model with CLIP's preprocessing (every registry model's)."""
    return build_eval_transform(size, PreprocessConfig())


def _jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _folder(root, names, per_class=2):
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (20, 24), (10 * i, 5 * j, 100)).save(root / name / f"{j}.jpg")


def test_clip_benchmark_layout(tmp_path):
    (tmp_path / "test").mkdir()
    for s in range(2):
        write_samples(tmp_path / "test" / f"{s}.tar", [(f"s{s}{i}", {"jpg": _jpeg((i * 40, 0, 0)), "cls": str(i % 3).encode()})
                                            for i in range(5)])
    (tmp_path / "test" / "nshards.txt").write_text("2\n")
    (tmp_path / "classnames.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c} square.\nthe {c} thing.\n")
    es = clip_benchmark_set(tmp_path, transform=eval_transform(16))
    assert (es.kind, es.classnames, es.templates, es.size) == ("classification", ["red", "green", "blue"],
                                                                ["a {c} square.", "the {c} thing."], 10)
    got = list(batches(es, batch_size=4))
    assert [len(b[1]) for b in got] == [4, 4, 2] and got[0][0].shape == (4, 3, 16, 16)
    assert torch.cat([b[1] for b in got]).tolist() == [i % 3 for i in range(5)] * 2
    assert clip_benchmark_set(tmp_path, transform=eval_transform(16), max_samples=3).size == 3
    sliced = list(batches(clip_benchmark_set(tmp_path, transform=eval_transform(16), max_samples=3)))
    # a slice is spread over the whole set (samples 0, 3 and 6 of 10), not cut from the front
    assert torch.cat([b[1] for b in sliced]).tolist() == [0, 0, 1]


def test_a_slice_of_a_class_sorted_shard_keeps_every_class(tmp_path):
    """Acceptance (issue 16): one class-sorted shard (as CIFAR-10's test set) sliced to 20%
    keeps every class within one image of its share of the slice, says how it was drawn, and
    the result counts the images scored. An image folder (class folders in order) likewise."""
    (tmp_path / "test").mkdir()
    sizes = [7 + 3 * c for c in range(10)]  # unequal classes: 7, 10, ..., 34 images
    write_samples(tmp_path / "test" / "0.tar", [(f"{c}_{i}", {"jpg": _jpeg((20 * c, 0, 0), (8, 8)), "cls": str(c).encode()})
                                       for c, n in enumerate(sizes) for i in range(n)])
    (tmp_path / "classnames.txt").write_text("\n".join(f"class {c}" for c in range(10)))
    total = sum(sizes)
    want = total // 5
    es = open_data(tmp_path, eval_transform(16), max_samples=want)
    labels = torch.cat([y for _, y in batches(es, batch_size=16)])
    assert len(labels) == es.size == want
    counts = torch.bincount(labels, minlength=10)
    for c, n in enumerate(sizes):
        assert abs(counts[c].item() - n * want / total) < 1, (c, counts.tolist())
    assert es.drawn == f"{want} of {total} samples, evenly spaced over the whole set (1 in 5)"
    assert open_data(tmp_path, eval_transform(16)).drawn is None

    for c, n in enumerate(sizes):
        (tmp_path / "folder" / f"c{c}").mkdir(parents=True)
        for i in range(n):
            (tmp_path / "folder" / f"c{c}" / f"{i:02d}.jpg").write_bytes(b"")
    folder = open_data(tmp_path / "folder", eval_transform(16), classnames=str(tmp_path / "classnames.txt"),
                       max_samples=want)
    counts = torch.bincount(torch.tensor([label for _, label in folder.dataset.items]), minlength=10)
    assert all(abs(counts[c].item() - n * want / total) < 1 for c, n in enumerate(sizes)), counts.tolist()

    model = clipa.create_model("clipa-tiny").eval()
    metrics = evaluate_set(model, tokenizer_for(model), es, "zeroshot", options(32))
    assert metrics["samples"] == {"scored": want, "skipped": {}, "drawn": es.drawn}


def test_caption_shards_json_and_txt(tmp_path):
    write_samples(tmp_path / "d-0.tar", [("k0", {"jpg": _jpeg("red"), "json": json.dumps({"captions": ["a", "b"]}).encode()}),
                                ("k1", {"jpg": _jpeg("blue"), "txt": b"one\ntwo\nthree\n"})])
    write_samples(tmp_path / "d-1.tar", [("k2", {"jpg": _jpeg("green"), "json": b'{"captions": ["c"]}', "txt": b"ignored"})])
    es = caption_shards_set(str(tmp_path / "d-{0..1}.tar"), eval_transform(8))
    assert es.kind == "retrieval"
    (images, captions), = list(batches(es, batch_size=8))
    assert images.shape == (3, 3, 8, 8) and captions == [["a", "b"], ["one", "two", "three"], ["c"]]
    # braceexpand keeps zero padding
    write_samples(tmp_path / "p-09.tar", [("k9", {"jpg": _jpeg("red"), "txt": b"nine"})])
    write_samples(tmp_path / "p-10.tar", [("k10", {"jpg": _jpeg("red"), "txt": b"ten"})])
    assert [c for _, cs in batches(caption_shards_set(str(tmp_path / "p-{09..10}.tar"), eval_transform(8)))
            for c in cs] == [["nine"], ["ten"]]
    with pytest.raises(FileNotFoundError):
        caption_shards_set(str(tmp_path / "d-{0..2}.tar"), eval_transform(8))


def test_image_folder_and_open_data(tmp_path):
    _folder(tmp_path / "imgs", ["b_cls", "a_cls"])
    (tmp_path / "names.txt").write_text("apple\nbanana\n")
    es = image_folder_set(tmp_path / "imgs", tmp_path / "names.txt", transform=eval_transform(16))
    assert es.classnames == ["apple", "banana"] and len(es.templates) == 80 and es.size == 4
    assert [es.dataset[i][1] for i in range(4)] == [0, 0, 1, 1]  # sorted folders: a_cls = 0
    assert open_data(tmp_path / "imgs", eval_transform(16), classnames=str(tmp_path / "names.txt")).size == 4
    with pytest.raises(FileNotFoundError, match="--classnames"):
        open_data(tmp_path / "imgs", eval_transform(16))


def test_imagenet_metadata_matches_references():
    zsm = pytest.importorskip("open_clip.zero_shot_metadata")
    cb = pytest.importorskip("clip_benchmark.datasets.builder")
    assert list(imagenet.IMAGENET_CLASSNAMES) == list(zsm.IMAGENET_CLASSNAMES)
    assert list(imagenet.OPENAI_IMAGENET_TEMPLATES) == [t("{c}") for t in zsm.OPENAI_IMAGENET_TEMPLATES]
    assert list(imagenet.IMAGENET_WNIDS) == cb.all_imagenet_wordnet_ids
    for indices in (imagenet.IMAGENET_A_INDICES, imagenet.IMAGENET_R_INDICES):
        assert len(indices) == 200 and list(indices) == sorted(set(indices))
    assert imagenet.IMAGENET_CLASSNAMES[imagenet.IMAGENET_A_INDICES[0]] == "stingray"  # n01498041


def test_imagenet_variants(tmp_path):
    wn = imagenet.IMAGENET_WNIDS
    a_idx = imagenet.IMAGENET_A_INDICES
    _folder(tmp_path / "a", [wn[a_idx[5]], wn[a_idx[0]], "n99999999"])  # unknown folders are skipped
    es = imagenet_set("imagenet-a", tmp_path / "a", eval_transform(8))
    assert len(es.classnames) == 200 and es.classnames[5] == imagenet.IMAGENET_CLASSNAMES[a_idx[5]]
    assert sorted(es.dataset[i][1] for i in range(es.size)) == [0, 0, 5, 5]
    _folder(tmp_path / "v2", ["10", "2"])  # folder names are class indices, not sorted positions
    assert sorted(imagenet_set("imagenet-v2", tmp_path / "v2", eval_transform(8)).dataset[i][1] for i in range(4)) \
        == [2, 2, 10, 10]
    _folder(tmp_path / "val", [wn[999], wn[0]])
    assert sorted(x[1] for x in imagenet_set("imagenet-val", tmp_path / "val", eval_transform(8)).dataset) \
        == [0, 0, 999, 999]
    base = tmp_path / "objectnet" / "objectnet-1.0"
    _folder(base / "images", ["air_freshener", "alarm_clock", "banana"])
    (base / "mappings").mkdir()
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"air_freshener": "Air freshener", "alarm_clock": "Alarm clock", "banana": "Banana"}))
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
    on = imagenet_set("objectnet", tmp_path / "objectnet", eval_transform(8))
    assert on.classnames == ["alarm clock", "banana"] and on.size == 4


def test_linear_probe_against_sklearn():
    from sklearn.linear_model import LogisticRegression
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g)
    y = torch.arange(400) % 5
    x = centers[y] + 0.8 * torch.randn(400, 16, generator=g)
    tr, te = holdout_split(y, 0.5)
    assert torch.bincount(y[tr]).tolist() == [40] * 5 and len(set(tr.tolist()) & set(te.tolist())) == 0
    out = linear_probe(x[tr], y[tr], x[te], y[te], c=1.0)
    ref = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(x[tr].double().numpy(), y[tr].numpy())
    assert out["acc1"] == pytest.approx(float((ref.predict(x[te].double().numpy()) == y[te].numpy()).mean()))
    swept = linear_probe(x[tr], y[tr], x[te], y[te])
    assert swept["C"] in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0) and swept["acc1"] > 0.8


def test_linear_probe_fitting_shows_progress(capsys):
    """The fits (7 swept C values, then the final one) get a bar of their own, and the same result."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(3, 8, generator=g)[y] + 0.5 * torch.randn(60, 8, generator=g)
    quiet = linear_probe(x[:40], y[:40], x[40:], y[40:])
    assert "linear probe" not in capsys.readouterr().err
    shown = linear_probe(x[:40], y[:40], x[40:], y[40:], show_progress=True)
    err = capsys.readouterr().err
    same = all(shown[k] == v or (v != v and shown[k] != shown[k]) for k, v in quiet.items())  # NaN: top-5 of 3 classes
    assert same and shown.keys() == quiet.keys()
    assert "linear probe on 40 features" in err and "/8 [" in err  # a bar over the 8 fits


@pytest.fixture
def weights(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in clipa.create_model("clipa-tiny").state_dict().items()}, str(path))
    return path


def test_a_folder_of_several_splits_gives_one_and_counts_it(tmp_path, weights, capsys):
    """flickr8k/ holds train-*.tar, val-0.tar and test-0.tar: `clipa eval --data flickr8k/` scores
    the test split only (--split picks another) and prints how many images and captions it scored."""
    (tmp_path / "f").mkdir()
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_samples(tmp_path / "f" / f"{split}-0.tar", [(f"{split}{i}", {"jpg": _jpeg((30 * i, 0, 0)),
                                                                 "txt": f"{split} {i}\nagain {i}".encode()})
                                                for i in range(n)])
    assert main(["eval", str(weights), "--model", "clipa-tiny", "--data", str(tmp_path / "f"), "--no-progress",
                 "--output", str(tmp_path / "r.json")]) == 0
    table = {line.split()[2]: line.split()[3] for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert (table["images"], table["captions"], table["skipped"]) == ("3", "6", "0")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dataset"] == "f-test" and result["samples"] == {"scored": 3, "captions": 6, "skipped": {}}
    assert open_data(tmp_path / "f", eval_transform(16), split="train").dataset.count() == 4
    with pytest.raises(FileNotFoundError, match=r"several splits \(test, train, val\).*--split"):
        open_data(tmp_path / "f", eval_transform(16), split="dev")


def test_eval_command_tasks(tmp_path, weights, capsys):
    (tmp_path / "d" / "test").mkdir(parents=True)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    write_samples(tmp_path / "d" / "test" / "0.tar", [(f"k{i}", {"jpg": _jpeg(colors[i % 3]), "cls": str(i % 3).encode()})
                                             for i in range(24)])
    (tmp_path / "d" / "classnames.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "d" / "zeroshot_classification_templates.txt").write_text("a {c} square.\n")
    write_samples(tmp_path / "caps.tar", [(f"c{i}", {"jpg": _jpeg(colors[i % 3]), "json": json.dumps(
        {"captions": [f"a {i}", f"b {i}"]}).encode()}) for i in range(6)])
    out = tmp_path / "res_{dataset}_{task}.json"
    base = ["eval", str(weights), "--model", "clipa-tiny", "--no-progress", "--output", str(out)]
    assert main(base + ["--data", str(tmp_path / "d"), "--data", str(tmp_path / "caps.tar")]) == 0
    zs = json.loads((tmp_path / "res_d_zeroshot.json").read_text())
    assert zs["task"] == "zeroshot_classification" and zs["metrics"]["acc5"] is None  # 3 classes: no top-5
    rt = json.loads((tmp_path / f"res_{tmp_path.name}-caps_retrieval.json").read_text())  # "<folder>-<file>"
    assert set(rt["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert main(base + ["--data", str(tmp_path / "d"), "--task", "linear-probe"]) == 0
    lp = json.loads((tmp_path / "res_d_linear-probe.json").read_text())
    assert lp["task"] == "linear_probe" and 0 <= lp["metrics"]["acc1"] <= 1
    table = capsys.readouterr().out
    assert "mean_per_class_recall" in table and "text_retrieval_recall@10" in table


def test_evaluate_run_reads_the_runs_eval_data(tmp_path):
    write_samples(tmp_path / "caps.tar", [(f"c{i}", {"jpg": _jpeg((40 * i, 0, 0)), "txt": f"x {i}\ny {i}".encode()})
                                 for i in range(5)])
    model = clipa.create_model("clipa-tiny")
    model.train()
    name, task, metrics = evaluate_run(model, tokenizer_for(model), "digits", str(tmp_path / "caps.tar"), options(2))
    assert (name, task) == (f"{tmp_path.name}-caps", "retrieval")
    assert model.training and metrics["image_retrieval_recall@10"] == 1.0
    assert metrics["samples"] == {"scored": 5, "captions": 10, "skipped": {}}


# ----------------------------------------------------------------------------- damaged sets

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _benchmark_set(root: Path, shards: list[list[tuple[str, dict]]]) -> Path:
    (root / "test").mkdir(parents=True)
    for i, samples in enumerate(shards):
        write_samples(root / "test" / f"{i}.tar", samples)
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c} square.\n")
    return root


def _sample(key: str, i: int) -> tuple[str, dict]:
    return key, {"jpg": _jpeg(tuple(c // 2 + 10 * i for c in COLORS[i % 3])), "cls": str(i % 3).encode()}


def test_a_corrupt_tar_header_costs_only_the_damaged_sample(tmp_path, weights):
    """Acceptance (issue 11): a CLIP_benchmark set whose first shard has a corrupt tar header in
    the middle. The runner and ``clipa eval`` (a fresh process) report every good sample as
    scored and the damaged ones as skipped, and score exactly what the good samples alone score."""
    first = [_sample(f"a{i}", i) for i in range(10)]
    second = [_sample(f"b{i}", i) for i in range(6)]
    truncated = _jpeg((9, 9, 9))[:200]
    damaged = _benchmark_set(tmp_path / "damaged", [first, second[:3] + [("b9", {"jpg": truncated, "cls": b"1"})]
                                                    + second[3:]])
    corrupt_header(damaged / "test" / "0.tar", "a4.jpg")  # in the middle of the first shard
    # Python's tarfile, as the old reader used it, ends the first shard at the damage
    with tarfile.open(damaged / "test" / "0.tar", "r|") as tar:
        assert [m.name for m in tar] == [f"a{i}.{e}" for i in range(4) for e in ("jpg", "cls")]
    clean = _benchmark_set(tmp_path / "clean", [first[:4] + first[5:], second])
    samples = {"scored": 15, "skipped": {"corrupt_image": 1, "corrupt_shard": 1}}

    model = clipa.create_model("clipa-tiny", pretrained=weights).eval()
    tokenizer = tokenizer_for(model)
    got = evaluate_set(model, tokenizer, open_data(damaged, eval_transform(32)), "zeroshot", options(4))
    want = evaluate_set(model, tokenizer, open_data(clean, eval_transform(32)), "zeroshot", options(4))
    assert got["samples"] == samples and want["samples"] == {"scored": 15, "skipped": {}}
    record = result_record("damaged", "zeroshot", got, "clipa-tiny", str(weights))
    assert record["samples"] == samples and set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert record["metrics"] == result_record("clean", "zeroshot", want, "clipa-tiny", "")["metrics"]

    out = tmp_path / "x.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(clipa.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "clipa", "eval", str(weights), "--model", "clipa-tiny",
                          "--data", str(damaged), "--no-progress", "--batch-size", "4", "--output", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["samples"] == samples and result["metrics"] == record["metrics"]
    assert "skipped corrupt_shard" in run.stderr and "a4" in run.stderr  # the damage is named
    assert "15 samples scored, 2 skipped (corrupt_image=1, corrupt_shard=1)" in run.stderr


def test_every_kind_of_bad_evaluation_sample_is_counted(tmp_path, weights):
    """Each bad sample has its reason; the rest are scored (classification, retrieval, folders)."""
    good = [_sample(f"g{i}", i) for i in range(4)]
    root = _benchmark_set(tmp_path / "cls", [good[:2] + [
        ("x0", {"jpg": _jpeg("red")}),  # no .cls
        ("x1", {"jpg": _jpeg("red"), "cls": b"red"}),  # not an integer
        ("x2", {"png": bomb_png(), "cls": b"0"}),
        ("x3", {"jpg": b"", "cls": b"0"}),
        ("x4", {"cls": b"2"}),
    ] + good[2:]])
    data = (root / "test" / "0.tar").read_bytes()
    (root / "test" / "1.tar").write_bytes(data[:data.index(b"g1.jpg") + 512 + 100])  # truncated inside g1.jpg
    (root / "test" / "nshards.txt").write_text("2\n")
    model = clipa.create_model("clipa-tiny", pretrained=weights).eval()
    tokenizer = tokenizer_for(model)
    metrics = evaluate_set(model, tokenizer, open_data(root, eval_transform(32)), "zeroshot", options(3))
    # the truncated copy yields its first sample (g0) before the damage; the rest counts once
    assert metrics["samples"] == {"scored": 5, "skipped": {
        "bad_text": 1, "corrupt_shard": 1, "decompression_bomb": 1, "empty_image": 1, "missing_image": 1,
        "missing_label": 1}}
    write_samples(tmp_path / "caps.tar", [("c0", {"jpg": _jpeg("red"), "txt": b"one\n\n two \n"}),
                                 ("c1", {"jpg": _jpeg("blue"), "txt": b" \n "}),
                                 ("c2", {"jpg": _jpeg("green"), "json": b'{"captions": ["c"]}'})])
    got = [(len(i), c) for i, c in batches(caption_shards_set(tmp_path / "caps.tar", eval_transform(8)))]
    assert got == [(2, [["one", "two"], ["c"]])]  # captions as lines; c1 has none (empty_caption)
    _folder(tmp_path / "imgs", ["a", "b"])
    (tmp_path / "imgs" / "b" / "2.jpg").write_bytes(b"not an image")
    (tmp_path / "names.txt").write_text("apple\nbanana\n")
    folder_set = open_data(tmp_path / "imgs", eval_transform(32), classnames=str(tmp_path / "names.txt"))
    folder = evaluate_set(model, tokenizer, folder_set, "zeroshot", options(256))
    assert folder["samples"] == {"scored": 4, "skipped": {"corrupt_image": 1}}


def test_given_templates_replace_a_benchmark_sets_own_and_must_exist(tmp_path):
    (tmp_path / "test").mkdir()
    write_samples(tmp_path / "test" / "0.tar", [(f"s{i}", {"jpg": _jpeg((i * 40, 0, 0)), "cls": b"0"}) for i in range(2)])
    (tmp_path / "classnames.txt").write_text("red\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c} square.\n")
    mine = tmp_path / "mine.txt"
    mine.write_text("my {c}.\nour {c}.\n")
    assert open_data(tmp_path, eval_transform(16)).templates == ["a {c} square."]
    assert open_data(tmp_path, eval_transform(16), templates=str(mine)).templates == ["my {c}.", "our {c}."]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        open_data(tmp_path, eval_transform(16), templates=str(tmp_path / "missing.txt"))
    shards = tmp_path / "captions"
    shards.mkdir()
    write_samples(shards / "0.tar", [("c0", {"jpg": _jpeg((0, 0, 0)), "txt": b"a black square"})])
    with pytest.raises(ValueError, match="is a retrieval set, which uses no templates"):
        open_data(shards, eval_transform(16), templates=str(mine))

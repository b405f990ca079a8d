"""Evaluation data readers, ImageNet metadata, linear probe and the ``clipa eval`` command on tiny
synthetic data (no shared data needed)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import clipa
from clipa.cli import main
from clipa.eval import imagenet, linear_probe
from clipa.eval.datasets import (caption_shards_set, clip_benchmark_set, eval_transform, expand_braces,
                                 image_folder_set, imagenet_set, loader)
from clipa.eval.linear_probe import holdout_split
from clipa.eval.runner import open_data, run_evals


def _jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _folder(root, names, per_class=2):
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (20, 24), (10 * i, 5 * j, 100)).save(root / name / f"{j}.jpg")


def test_transform_matches_openclip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transform import image_transform
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)).convert("P")
    torch.testing.assert_close(eval_transform(24)(im), image_transform(24, is_train=False)(im), atol=0, rtol=0)


def test_expand_braces():
    assert expand_braces("a/t-{0..2}.tar") == ["a/t-0.tar", "a/t-1.tar", "a/t-2.tar"]
    assert expand_braces("s{008..010}.tar") == ["s008.tar", "s009.tar", "s010.tar"]
    assert expand_braces("x.tar") == ["x.tar"]


def test_clip_benchmark_layout(tmp_path):
    (tmp_path / "test").mkdir()
    for s in range(2):
        _tar(tmp_path / "test" / f"{s}.tar", [(f"s{s}{i}", {"jpg": _jpeg((i * 40, 0, 0)), "cls": str(i % 3).encode()})
                                            for i in range(5)])
    (tmp_path / "test" / "nshards.txt").write_text("2\n")
    (tmp_path / "classnames.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a {c} square.\nthe {c} thing.\n")
    es = clip_benchmark_set(tmp_path, transform=eval_transform(16))
    assert (es.kind, es.classnames, es.templates, es.size) == ("classification", ["red", "green", "blue"],
                                                                ["a {c} square.", "the {c} thing."], 10)
    batches = list(loader(es, batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2] and batches[0][0].shape == (4, 3, 16, 16)
    assert torch.cat([b[1] for b in batches]).tolist() == [i % 3 for i in range(5)] * 2
    assert clip_benchmark_set(tmp_path, transform=eval_transform(16), max_samples=3).size == 3
    sliced = list(loader(clip_benchmark_set(tmp_path, transform=eval_transform(16), max_samples=3)))
    # a slice is spread over the shards (2 from the first, 1 from the second), not cut from the front
    assert torch.cat([b[1] for b in sliced]).tolist() == [0, 1, 0]


def test_caption_shards_json_and_txt(tmp_path):
    _tar(tmp_path / "d-0.tar", [("k0", {"jpg": _jpeg("red"), "json": json.dumps({"captions": ["a", "b"]}).encode()}),
                                ("k1", {"jpg": _jpeg("blue"), "txt": b"one\ntwo\nthree\n"})])
    _tar(tmp_path / "d-1.tar", [("k2", {"jpg": _jpeg("green"), "json": b'{"captions": ["c"]}', "txt": b"ignored"})])
    es = caption_shards_set(str(tmp_path / "d-{0..1}.tar"), eval_transform(8))
    assert es.kind == "retrieval"
    (images, captions), = list(loader(es, batch_size=8))
    assert images.shape == (3, 3, 8, 8) and captions == [["a", "b"], ["one", "two", "three"], ["c"]]
    with pytest.raises(FileNotFoundError):
        caption_shards_set(str(tmp_path / "d-{0..2}.tar"), eval_transform(8))


def test_image_folder_and_open_data(tmp_path):
    _folder(tmp_path / "imgs", ["b_cls", "a_cls"])
    (tmp_path / "names.txt").write_text("apple\nbanana\n")
    es = image_folder_set(tmp_path / "imgs", tmp_path / "names.txt", transform=eval_transform(16))
    assert es.classnames == ["apple", "banana"] and len(es.templates) == 80 and es.size == 4
    assert [es.dataset[i][1] for i in range(4)] == [0, 0, 1, 1]  # sorted folders: a_cls = 0
    assert open_data(tmp_path / "imgs", 16, classnames=str(tmp_path / "names.txt")).size == 4
    with pytest.raises(FileNotFoundError, match="--classnames"):
        open_data(tmp_path / "imgs", 16)


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


@pytest.fixture
def weights(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in clipa.create_model("clipa-tiny").state_dict().items()}, str(path))
    return path


def test_eval_command_tasks(tmp_path, weights, capsys):
    (tmp_path / "d" / "test").mkdir(parents=True)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    _tar(tmp_path / "d" / "test" / "0.tar", [(f"k{i}", {"jpg": _jpeg(colors[i % 3]), "cls": str(i % 3).encode()})
                                             for i in range(24)])
    (tmp_path / "d" / "classnames.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "d" / "zeroshot_classification_templates.txt").write_text("a {c} square.\n")
    _tar(tmp_path / "caps.tar", [(f"c{i}", {"jpg": _jpeg(colors[i % 3]), "json": json.dumps(
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


def test_run_evals_hook(tmp_path):
    from clipa.config import EvalConfig
    _tar(tmp_path / "caps.tar", [(f"c{i}", {"jpg": _jpeg((40 * i, 0, 0)), "txt": f"x {i}\ny {i}".encode()})
                                 for i in range(5)])
    model = clipa.create_model("clipa-tiny")
    model.train()
    from clipa.tokenizer import tokenizer_for
    metrics = run_evals(model, tokenizer_for(model), EvalConfig(data=str(tmp_path / "caps.tar"), batch_size=2), "cpu")
    assert model.training and metrics["image_retrieval_recall@10"] == 1.0

"""``clipa eval`` against CLIP_benchmark (the library) on slices of the real shared data sets.

A small random model is exported to OpenCLIP's format; CLIP_benchmark loads the export through
OpenCLIP and scores it, ``clipa eval`` scores the same weights with clipa's own model, data
reading, transform and metrics. The numbers must agree to 1e-6.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

import clipa
from clipa.cli import main
from clipa.data.tar import iter_groups
from clipa.export import export_openclip

pytestmark = [pytest.mark.shared, pytest.mark.slow]
cb_builder = pytest.importorskip("clip_benchmark.datasets.builder")
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval  # noqa: E402
from clip_benchmark.models import load_clip  # noqa: E402


def _first(shard: Path, n: int) -> list[dict[str, bytes]]:
    with open(shard, "rb") as f:
        return [sample for _, sample in iter_groups(f, lambda i: True, stop=n)]


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random clipa model saved as weights (for clipa eval) and as an OpenCLIP folder."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("model")
    model = clipa.create_model("clipa-tiny").eval()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors"))
    export_openclip(model, root / "openclip")
    return root


def _clip_benchmark_model(exported):
    return load_clip("open_clip", f"local-dir:{exported / 'openclip'}", None, None, device="cpu")


def _clipa_eval(exported, tmp_path, *args) -> dict:
    out = tmp_path / "result.json"
    assert main(["eval", str(exported / "w.safetensors"), "--model", "clipa-tiny", "--no-progress",
                 "--batch-size", "64", "--output", str(out), *args]) == 0
    return json.loads(out.read_text())["metrics"]


def test_zeroshot_parity_cifar10(shared_data, exported, tmp_path):
    """20 images of each CIFAR-10 class (the shards are sorted by class) in CLIP_benchmark's layout."""
    src = shared_data / "cifar10"
    root = tmp_path / "cifar10_slice"
    (root / "test").mkdir(parents=True)
    samples = []
    for shard in sorted((src / "test").glob("*.tar")):
        samples += _first(shard, 20)
    _write_tar(root / "test" / "0.tar", samples)
    (root / "test" / "nshards.txt").write_text("1\n")
    for name in ("classnames.txt", "zeroshot_classification_templates.txt"):
        (root / name).write_text((src / name).read_text())

    model, transform, tokenizer = _clip_benchmark_model(exported)
    ds = cb_builder.build_dataset("wds/cifar10_slice", root=str(root), transform=transform, split="test")
    dl = torch.utils.data.DataLoader(ds.batched(64), batch_size=None)
    dl.dataset.classes = ds.classes
    ref = zeroshot_classification.evaluate(model, dl, tokenizer, ds.classes, ds.templates, "cpu", amp=False)

    ours = _clipa_eval(exported, tmp_path, "--data", str(root))
    assert set(ours) == {"acc1", "acc5", "mean_per_class_recall"}
    for key in ours:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ref["acc5"] < 1  # a real comparison, not a degenerate one


def test_retrieval_parity_flickr8k(shared_data, exported, tmp_path):
    """The first 80 Flickr8k test images with their 5 captions each: clipa reads the ``.json``
    captions, CLIP_benchmark its own retrieval layout (``.txt`` lines) built from them."""
    samples = _first(shared_data / "flickr8k" / "test-0.tar", 80)
    slice_tar = tmp_path / "flickr8k-test-slice.tar"
    _write_tar(slice_tar, samples)
    root = tmp_path / "flickr8k_cb"
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    caption_lines = [{"__key__": s["__key__"], "jpg": s["jpg"],
                      "txt": "\n".join(json.loads(s["json"])["captions"]).encode()} for s in samples]
    _write_tar(root / "test" / "0.tar", caption_lines)

    model, transform, tokenizer = _clip_benchmark_model(exported)
    ds = cb_builder.build_dataset("wds/flickr8k_slice", root=str(root), transform=transform, split="test",
                                  task="zeroshot_retrieval")
    dl = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=cb_builder.image_captions_collate_fn)
    ref = zeroshot_retrieval.evaluate(model, dl, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])

    ours = _clipa_eval(exported, tmp_path, "--data", str(slice_tar))
    assert set(ours) == set(ref)
    for key in ours:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ref["text_retrieval_recall@10"] < 1

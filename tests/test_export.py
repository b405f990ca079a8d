"""Exports load unchanged in OpenCLIP and transformers and compute what clipa computes."""

import json

import pytest
import torch

import clipa
from clipa.export import ExportError, export_hf, export_openclip, hf_unsupported
from clipa.tokenizer import tokenizer_for

TEXTS = ["a photo of a cat", "a dog on the grass in the park, running!", "Hello   World  café", "x " * 30]


def _small(name, **overrides):
    torch.manual_seed(0)
    overrides.setdefault("vision", {}).setdefault("layers", 2)
    overrides.setdefault("text", {}).setdefault("layers", 2)
    return clipa.create_model(name, **overrides).eval()


@pytest.mark.parametrize("name,overrides", [
    ("clipa-tiny", {}),  # OpenAI-style towers
    ("clipa-tiny-clipa", {}),  # CLIPA towers: mean pool, no pre-LN, sin-cos, bidirectional text
    ("clipa-tiny", {"vision": {"act": "quick_gelu"}, "text": {"act": "quick_gelu"}}),
    ("clipa-tiny", {"vision": {"act": "gelu_tanh"}}),
])
def test_openclip_export_loads_unchanged(tmp_path, name, overrides):
    open_clip = pytest.importorskip("open_clip")
    model = _small(name, **overrides)
    export_openclip(model, tmp_path)
    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    oc.eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{tmp_path}")(TEXTS)
    assert torch.equal(tokens, tokenizer_for(model)(TEXTS))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(oc.encode_image(images), model.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(oc.encode_text(tokens), model.encode_text(tokens), atol=1e-5, rtol=0)
    assert preprocess.transforms[0].size == 32  # OpenCLIP's eval transform at the model's size


def test_hf_export_logits_match(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _small("clipa-tiny", vision={"act": "quick_gelu"}, text={"act": "quick_gelu"})
    export_hf(model, tmp_path)
    hf = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path)
    ours = tokenizer_for(model)(TEXTS)
    theirs = processor.tokenizer(TEXTS, padding="max_length", max_length=model.context_length, truncation=True,
                                 return_tensors="pt").input_ids
    eot = ours.argmax(dim=1)  # same ids up to end-of-text; HF pads with end-of-text, OpenCLIP with 0
    for row in range(len(TEXTS)):
        assert torch.equal(ours[row, :eot[row] + 1], theirs[row, :eot[row] + 1])
    images = torch.randn(len(TEXTS), 3, 32, 32)
    with torch.no_grad():
        logits = hf(input_ids=theirs, pixel_values=images).logits_per_image
        img, txt, scale = model(images, ours)
    torch.testing.assert_close(logits, scale * img @ txt.T, atol=1e-4, rtol=0)


def test_hf_export_refuses_what_clipmodel_cannot_hold(tmp_path):
    model = _small("clipa-tiny-clipa")
    reasons = " ".join(hf_unsupported(model))
    for word in ("pool 'avg'", "pre-LayerNorm", "bidirectional", "pool 'last'"):
        assert word in reasons
    with pytest.raises(ExportError, match="--format openclip"):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_command(tmp_path, capsys):
    from safetensors.torch import save_file

    from clipa.cli import main
    for name in ("clipa-tiny", "clipa-tiny-clipa"):
        weights = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in clipa.create_model(name).state_dict().items()}, str(weights))
    out = tmp_path / "oc"
    assert main(["export", str(tmp_path / "clipa-tiny.safetensors"), "--model", "clipa-tiny", "-o", str(out)]) == 0
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["layers"] == 3 and cfg["preprocess_cfg"]["size"] == 32
    assert (out / "open_clip_model.safetensors").exists()
    argv = ["export", str(tmp_path / "clipa-tiny-clipa.safetensors"), "--model", "clipa-tiny-clipa",
            "--format", "hf", "-o", str(tmp_path / "hf")]
    assert main(argv) == 2
    assert "cannot represent" in capsys.readouterr().err

"""Weight and output parity with OpenCLIP v3.3.0 (the independent reference)."""

import pytest
import torch

import clipa

open_clip = pytest.importorskip("open_clip")

# (name, depth overrides) — depth is reduced for speed; widths and layouts are the real ones.
CASES = [("ViT-B-32", 2), ("ViT-B-16", 2), ("ViT-L-14-CLIPA", 1), ("ViT-S-16", 1)]


def _openclip_model(name: str, layers: int):
    cfg = open_clip.get_model_config(name)
    cfg["vision_cfg"]["layers"] = layers
    cfg["text_cfg"]["layers"] = layers
    cfg["text_cfg"].pop("hf_tokenizer_name", None)
    cfg["text_cfg"].pop("tokenizer_kwargs", None)
    return open_clip.model.CLIP(**cfg).eval()


@pytest.mark.parametrize("name,layers", CASES)
def test_openclip_weights_load_strict_and_embeddings_match(name, layers):
    torch.manual_seed(0)
    ref = _openclip_model(name, layers)
    ours = clipa.create_model(name, vision={"layers": layers}, text={"layers": layers}).eval()
    ref_sd = ref.state_dict()
    assert set(ours.state_dict()) == set(ref_sd)
    for k, v in ours.state_dict().items():
        assert v.shape == ref_sd[k].shape, k
    ours.load_state_dict(ref_sd, strict=True)

    size = ours.visual.image_size
    images = torch.randn(2, 3, size, size)
    ctx = ours.context_length
    text = torch.randint(1, ours.text_cfg.vocab_size - 2, (2, ctx))
    text[0, 5:] = 0
    text[0, 4] = ours.text_cfg.vocab_size - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=1e-5)


def test_pretrained_file_loads_with_resized_position_embedding(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = _openclip_model("ViT-B-32", 1)
    path = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    same = clipa.create_model("ViT-B-32", pretrained=path, vision={"layers": 1}, text={"layers": 1})
    torch.testing.assert_close(same.visual.positional_embedding, ref.visual.positional_embedding)
    bigger = clipa.create_model(
        "ViT-B-32", pretrained=path, vision={"layers": 1, "image_size": 288}, text={"layers": 1}
    )
    assert bigger.visual.positional_embedding.shape == (9 * 9 + 1, 768)
    torch.save(ref.state_dict(), tmp_path / "ref.pt")
    from_pt = clipa.create_model("ViT-B-32", pretrained=tmp_path / "ref.pt", vision={"layers": 1}, text={"layers": 1})
    torch.testing.assert_close(from_pt.logit_scale, ref.logit_scale)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="ViT-B-32"):
        clipa.create_model("ViT-X-99")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        clipa.create_model("clipa-tiny", pretrained=tmp_path / "nope.safetensors")

"""clipa's OpenCLIP-style entry points against OpenCLIP 3.3.0 itself: create_model_and_transforms,
tokenize and list_models give what the same open_clip calls give."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import clipa

open_clip = pytest.importorskip("open_clip")


def _photo(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return Image.open(io.BytesIO(buf.getvalue())).convert(mode)


def test_create_model_and_transforms_matches_openclip(tmp_path):
    """The same weights, preprocessed and tokenized each library's own way, give the same
    embeddings (to 1e-5), and both training transforms crop the same place for the same seed."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = open_clip.get_model_config("ViT-B-32")  # two blocks per tower, for speed: shapes stay real
    towers = {f"{t}_cfg": {**cfg[f"{t}_cfg"], "layers": 2} for t in ("vision", "text")}
    ref, ref_train, ref_eval = open_clip.create_model_and_transforms("ViT-B-32", **towers)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model, train, evaluate = clipa.create_model_and_transforms("ViT-B-32", pretrained=tmp_path / "w.safetensors",
                                                               vision={"layers": 2}, text={"layers": 2})
    assert model.training == ref.training  # both come back in training mode
    model.eval(), ref.eval()

    photos = [_photo(0, (300, 200)), _photo(1, (180, 260), "L"), _photo(2, (224, 224), "RGBA")]
    for photo in photos:
        torch.testing.assert_close(evaluate(photo), ref_eval(photo), atol=1e-6, rtol=0)
        torch.manual_seed(7)
        want = ref_train(photo)
        torch.manual_seed(7)
        torch.testing.assert_close(train(photo), want, atol=1e-6, rtol=0)
    texts = ["a photo of a dog", "Two cats & a mouse!", "naïve café art"]
    assert torch.equal(clipa.tokenize(texts), open_clip.tokenize(texts))
    with torch.no_grad():
        images = torch.stack([evaluate(p) for p in photos])
        ref_images = torch.stack([ref_eval(p) for p in photos])
        torch.testing.assert_close(model.encode_image(images), ref.encode_image(ref_images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(clipa.tokenize(texts)), ref.encode_text(open_clip.tokenize(texts)),
                                   atol=1e-5, rtol=1e-5)


def test_transforms_follow_the_model_image_size():
    _, train, evaluate = clipa.create_model_and_transforms("clipa-tiny", vision={"image_size": 48})
    assert train(_photo(0, (90, 60))).shape == evaluate(_photo(0, (90, 60))).shape == (3, 48, 48)


@pytest.mark.parametrize("length", [77, 16, 5])
def test_tokenize_matches_openclip(length):
    texts = ["a photo of a dog", "A very long caption " * 20, "", "<start_of_text> tags & ampersands"]
    assert torch.equal(clipa.tokenize(texts, context_length=length), open_clip.tokenize(texts, context_length=length))
    assert torch.equal(clipa.tokenize("one text"), open_clip.tokenize("one text"))


def test_every_registry_name_builds_openclips_model():
    """Each name clipa.list_models() shares with OpenCLIP builds the same parameters with the
    same shapes (built on the meta device: no memory, so even bigG is instant)."""
    ours = [n for n in clipa.list_models() if not n.startswith("clipa-")]
    assert ours and set(ours) <= set(open_clip.list_models())
    for name in ours:
        cfg = open_clip.get_model_config(name)
        cfg["text_cfg"].pop("hf_tokenizer_name", None)
        cfg["text_cfg"].pop("tokenizer_kwargs", None)
        with torch.device("meta"):
            ref = {k: v.shape for k, v in open_clip.model.CLIP(**cfg).state_dict().items()}
            got = {k: v.shape for k, v in clipa.create_model(name).state_dict().items()}
        assert got == ref, name


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"])
def test_quickgelu_variants_match_openclip(name):
    """OpenAI's released weights use QuickGELU; the -quickgelu names build it."""
    if name not in clipa.list_models():
        pytest.skip(f"{name} is not registered in this checkout")
    cfg = open_clip.get_model_config(name)
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    torch.manual_seed(0)
    cfg.pop("quick_gelu", None)
    ref = open_clip.model.CLIP(**cfg, quick_gelu=True).eval()
    ours = clipa.create_model(name, vision={"layers": 1}, text={"layers": 1}).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    images, text = torch.randn(2, 3, 224, 224), open_clip.tokenize(["a dog", "a cat"])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- folders in OpenCLIP's layout

ODD = {"embed_dim": 64, "quick_gelu": True,  # in no registry: odd sizes, QuickGELU
       "vision_cfg": {"image_size": 48, "patch_size": 8, "width": 96, "layers": 2, "head_width": 32},
       "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}
SAME_SHAPES = {"embed_dim": 64, "vision": {"image_size": 48, "patch_size": 8, "width": 96, "layers": 2,
                                           "head_width": 32},
               "text": {"context_length": 20, "width": 64, "heads": 4, "layers": 2}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An OpenCLIP model with a config no registry has, saved by OpenCLIP's own hub writer
    (open_clip_config.json + open_clip_model.safetensors), and that model."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("openclip_save")
    torch.manual_seed(0)
    ref = open_clip.model.CLIP(**ODD).eval()
    ref.visual.image_mean, ref.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    with torch.no_grad():  # a non-trivial temperature and projection, so a wrong load shows
        ref.logit_scale.fill_(3.0)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    save_config_for_hf(ref, folder / "open_clip_config.json", model_config=ODD)
    return folder, ref


def _same_embeddings(model, ref, size: int = 48) -> None:
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    text = open_clip.tokenize(["a dog", "two cats on a mat", "x"], context_length=20)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=1e-5)


def test_an_openclip_folder_loads_by_path_with_its_config(saved):
    """Acceptance (issue 16): create_model(FOLDER) builds the folder's own architecture (QuickGELU
    included) and matches OpenCLIP to 1e-5; OpenCLIP itself reads the same folder."""
    folder, ref = saved
    oc, _, oc_eval = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    _same_embeddings(oc.eval(), ref)  # the folder is a valid OpenCLIP save
    model = clipa.create_model(str(folder)).eval()
    assert model.cfg.vision.act == model.cfg.text.act == "quick_gelu" and model.context_length == 20
    _same_embeddings(model, ref)
    assert model.logit_scale.item() == 3.0
    model, _, preprocess = clipa.create_model_and_transforms(str(folder))
    photo = _photo(3, (70, 50))
    torch.testing.assert_close(preprocess(photo), oc_eval(photo), atol=1e-6, rtol=0)
    assert torch.equal(clipa.get_tokenizer(str(folder))(["a dog"]), open_clip.tokenize(["a dog"], context_length=20))


def test_an_openclip_folder_as_pretrained(saved, tmp_path):
    """As ``pretrained`` (create_model, and a run's ``pretrained:``) the folder's weights load into
    a model of the same shapes with the folder's own config (its QuickGELU); a model of other
    shapes is one error naming the first parameter that differs, not a state_dict traceback."""
    from clipa.config import ConfigError, load_config
    from clipa.train.trainer import Trainer

    folder, ref = saved
    _same_embeddings(clipa.create_model("clipa-tiny", pretrained=folder, **SAME_SHAPES).eval(), ref)
    with pytest.raises(ConfigError, match=r"another architecture than model clipa-tiny: "
                                          r"ln_final.bias is \[64\] there, \[128\] here"):
        clipa.create_model("clipa-tiny", pretrained=folder)
    cfg = load_config(None, [f"pretrained={folder}", "model=clipa-tiny", f"train.output_dir={tmp_path}",
                             "train.device=cpu", "model_overrides={embed_dim: 64, vision: {image_size: 48, "
                             "patch_size: 8, width: 96, layers: 2, head_width: 32}, text: {context_length: 20, "
                             "width: 64, heads: 4, layers: 2}}"])
    _same_embeddings(Trainer(cfg).model.eval(), ref)


def test_clipa_eval_and_clipas_own_export_of_an_overridden_model(saved, tmp_path, capsys):
    """`clipa eval FOLDER` reads an OpenCLIP folder, and clipa's export of a model built with
    overrides (no registry name fits it) loads back by path with its config."""
    from conftest import image_bytes, write_samples

    from clipa.cli import main
    from clipa.export import export_openclip

    folder, ref = saved
    write_samples(tmp_path / "caps.tar", [(f"k{i}", {"jpg": image_bytes(i), "txt": f"picture {i}".encode()})
                                          for i in range(3)])
    assert main(["eval", str(folder), "--data", str(tmp_path / "caps.tar"), "--no-progress", "--device", "cpu"]) == 0
    assert "image_retrieval_recall@1" in capsys.readouterr().out

    torch.manual_seed(0)
    mine = clipa.create_model("clipa-tiny", **SAME_SHAPES).eval()
    export_openclip(mine, tmp_path / "export")
    back = clipa.create_model(str(tmp_path / "export")).eval()
    for k, v in mine.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k

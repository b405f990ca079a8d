"""clipa as a drop-in for OpenCLIP, against OpenCLIP 3.3.0 itself: every public name of
``open_clip`` is in ``clipa`` and gives what the same open_clip call gives (each checked below),
or is in the README's table of names clipa does not provide, with the reason."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from types import ModuleType

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
            got = {k: v.shape for k, v in clipa.create_model(name, device="meta").state_dict().items()}
        assert got == ref, name


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"])
def test_quickgelu_variants_match_openclip(name):
    """OpenAI's released weights use QuickGELU; the -quickgelu names build it."""
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


# ----------------------------------------------------------------------------- a drop-in for OpenCLIP (issue 22)

COVERED: set[str] = set()  # OpenCLIP names whose meaning a test below holds against OpenCLIP


def covers(*names: str):
    """Mark a test as the check that ``names`` mean in clipa what they mean in OpenCLIP."""
    COVERED.update(names)
    return lambda fn: fn


def openclip_readme_zero_shot(open_clip, model_name: str, image_path) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCLIP's README example ("Usage", open_clip 3.3.0) as written, with the model and image as
    arguments and without its ``torch.autocast("cuda")`` (a CPU test); then the same probabilities
    from ``forward``'s third value, as code ported from OpenCLIP's training computes logits."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    model.eval()  # model in train mode by default, impacts some models with BatchNorm or stochastic depth active
    tokenizer = open_clip.get_tokenizer(model_name)

    image = preprocess(Image.open(image_path)).unsqueeze(0)
    text = tokenizer(["a diagram", "a dog", "a cat"])

    with torch.no_grad():
        image_features = model.encode_image(image)
        text_features = model.encode_text(text)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)

        text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)

        image_features, text_features, logit_scale = model(image, text)
        forward_probs = (logit_scale * image_features @ text_features.T).softmax(dim=-1)
    return text_probs, forward_probs


@covers("CLIP", "create_model_and_transforms", "get_tokenizer")
def test_openclips_readme_example_with_clipa_as_open_clip(saved, tmp_path):
    """Acceptance (issue 22): the example run with ``import clipa as open_clip`` on an
    OpenCLIP-saved ViT gives OpenCLIP's probabilities within 1e-5, the logits from forward's
    third value (exp of the temperature, 20.1 here) included."""
    folder, _ = saved
    _photo(4, (120, 90)).save(tmp_path / "photo.png")
    name = f"local-dir:{folder}"
    import clipa as open_clip_drop_in

    ours = openclip_readme_zero_shot(open_clip_drop_in, name, tmp_path / "photo.png")
    theirs = openclip_readme_zero_shot(open_clip, name, tmp_path / "photo.png")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours[1].max() < 0.99  # at scale exp(3), not 100 or ln-scale 3: the two tests differ


@covers("create_model")
def test_forward_and_create_model_keywords_are_openclips(saved):
    """``forward`` returns OpenCLIP's tuple, or its dict with ``output_dict``, with a None tower
    where no input was given; the ``force_*`` keywords build OpenCLIP's model (position tables
    resampled as OpenCLIP resamples them) and ``model_name=``, ``device=``, ``precision=`` work."""
    folder, _ = saved
    name = f"local-dir:{folder}"
    for kw in ({}, {"force_image_size": 64}, {"force_context_length": 16}, {"force_image_size": (32, 32)}):
        ours = clipa.create_model(model_name=name, output_dict=True, device="cpu", **kw).eval()
        ref = open_clip.create_model(model_name=name, output_dict=True, device="cpu", **kw).eval()
        size = ours.visual.image_size
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        text = open_clip.tokenize(["a dog", "two cats"], context_length=ours.context_length)
        with torch.no_grad():
            got, want = ours(images, text), ref(images, text)
            assert got.keys() == want.keys() == {"image_features", "text_features", "logit_scale"}
            for key in want:
                torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0)
            ours.output_dict = ref.output_dict = False
            assert [t is None for t in ours(text=text)] == [t is None for t in ref(text=text)] == [True, False, False]
            assert ours(images)[0].shape == ref(images)[0].shape
    siglip = clipa.create_model("clipa-tiny", init_logit_bias=-10.0)
    assert len(siglip(text=clipa.tokenize(["x"], 16))) == 4 and siglip(text=clipa.tokenize(["x"], 16))[3] == -10.0
    assert next(clipa.create_model(name, precision="pure_bf16").parameters()).dtype == torch.bfloat16
    assert clipa.create_model(name, force_quick_gelu=True).cfg.vision.act == "quick_gelu"
    assert clipa.create_model(name, load_weights=False).logit_scale.item() != 3.0  # fresh weights
    for bad, match in (({"jit": True}, "TorchScript"), ({"weights_only": False}, "never unpickles"),
                       ({"force_custom_text": True}, "text transformer"), ({"precision": "fp8"}, "one of")):
        with pytest.raises(ValueError, match=match):
            clipa.create_model(name, **bad)
    with pytest.raises(ValueError, match="require_pretrained"):
        clipa.create_model("clipa-tiny", require_pretrained=True)


def test_patch_dropout_keeps_openclips_token_count(saved):
    """``force_patch_dropout`` drops patches in training only, keeping OpenCLIP's count."""
    folder, _ = saved
    counts = {}
    for lib in (clipa, open_clip):
        model = lib.create_model(f"local-dir:{folder}", force_patch_dropout=0.5)
        seen = []
        model.visual.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
        images = torch.randn(2, 3, 48, 48)
        model.train().encode_image(images)
        model.eval().encode_image(images)
        counts[lib.__name__] = seen
    assert counts["clipa"] == counts["open_clip"] == [1 + 18, 1 + 36]


@covers("create_model_from_pretrained", "image_transform", "AugmentationCfg")
@pytest.mark.filterwarnings("ignore:Unused augmentation cfg items")  # OpenCLIP's, though it applies gray_scale_prob
def test_transform_keywords_and_image_transform_are_openclips(saved):
    """The ``image_*`` and ``aug_cfg`` keywords and ``image_transform`` give OpenCLIP's pixels:
    evaluation to 1e-6, training under the same seed (grayscale drawn with probability 1)."""
    folder, _ = saved
    name = f"local-dir:{folder}"
    photos = [_photo(5, (70, 50)), _photo(6, (40, 64), "L")]
    kw = {"image_mean": 0.5, "image_std": (0.2, 0.3, 0.4), "image_interpolation": "bilinear",
          "image_resize_mode": "longest"}
    ours, ours_pre = clipa.create_model_from_pretrained(name, **kw)
    ref, ref_pre = open_clip.create_model_from_pretrained(name, **kw)
    _, ours_train, ours_eval = clipa.create_model_and_transforms(name, aug_cfg={"gray_scale_prob": 1.0}, **kw)
    _, ref_train, ref_eval = open_clip.create_model_and_transforms(name, aug_cfg={"gray_scale_prob": 1.0}, **kw)
    assert clipa.create_model_from_pretrained(name, return_transform=False).training
    with pytest.raises(ValueError, match="require_pretrained"):
        clipa.create_model_from_pretrained("clipa-tiny")
    transforms = [(ours_pre, ref_pre), (ours_eval, ref_eval)]
    for size, resize in ((40, "shortest"), (40, "squash"), (24, "longest")):
        transforms.append((clipa.image_transform(size, False, resize_mode=resize),
                           open_clip.image_transform(size, False, resize_mode=resize)))
    for photo in photos:
        for a, b in transforms:
            torch.testing.assert_close(a(photo), b(photo), atol=1e-6, rtol=0)
        for a, b in ((ours_train, ref_train),
                     (clipa.image_transform(32, True, aug_cfg=clipa.AugmentationCfg(scale=(0.5, 1.0))),
                      open_clip.image_transform(32, True, aug_cfg=open_clip.AugmentationCfg(scale=(0.5, 1.0))))):
            torch.manual_seed(3)
            want = b(photo)
            torch.manual_seed(3)
            torch.testing.assert_close(a(photo), want, atol=1e-6, rtol=0)
    ours_fields = [(f.name, f.default) for f in dataclasses.fields(clipa.AugmentationCfg)]
    assert ours_fields == [(f.name, f.default) for f in dataclasses.fields(open_clip.AugmentationCfg)]
    with pytest.raises(ValueError, match="timm"):
        clipa.image_transform(32, True, aug_cfg={"use_timm": True})


@covers("get_model_preprocess_cfg", "set_model_preprocess_cfg", "get_model_tokenize_cfg", "load_checkpoint")
def test_model_cfg_helpers_and_load_checkpoint_are_openclips(saved):
    folder, _ = saved
    ours, ref = clipa.create_model(str(folder)), open_clip.create_model(f"local-dir:{folder}")
    assert clipa.get_model_tokenize_cfg(ours) == open_clip.get_model_tokenize_cfg(ref) == {"context_length": 20,
                                                                                           "vocab_size": 49408}
    pp = {"size": (48, 48), "mode": "RGB", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
          "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0}
    as_read = open_clip.get_model_preprocess_cfg(ref).items()  # OpenCLIP keeps the JSON's lists
    assert clipa.get_model_preprocess_cfg(ours) == {k: tuple(v) if isinstance(v, list) else v for k, v in as_read}
    clipa.set_model_preprocess_cfg(ours, pp)
    open_clip.set_model_preprocess_cfg(ref, pp)
    assert clipa.get_model_preprocess_cfg(ours) == open_clip.get_model_preprocess_cfg(ref) == pp
    with pytest.raises(ValueError, match="size"):
        clipa.set_model_preprocess_cfg(ours, {**pp, "size": (96, 96)})

    weights = folder / "open_clip_model.safetensors"
    fresh, fresh_ref = clipa.create_model(str(folder), load_weights=False), open_clip.create_model(
        f"local-dir:{folder}", load_weights=False)
    assert clipa.load_checkpoint(fresh, weights) == open_clip.load_checkpoint(fresh_ref, str(weights))
    assert fresh.logit_scale.item() == fresh_ref.logit_scale.item() == 3.0


def test_tower_weight_files_load_as_in_openclip(saved, tmp_path):
    """``pretrained_image_path`` loads a file of image-tower keys into the image tower and
    ``pretrained_text_path`` one of the text tower's (top-level) keys into the model, as OpenCLIP does."""
    from safetensors.torch import save_file

    folder, ref = saved
    sd = ref.state_dict()
    save_file({k[len("visual."):]: v.contiguous() for k, v in sd.items() if k.startswith("visual.")},
              str(tmp_path / "image.safetensors"))
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("visual.") and k != "logit_scale"},
              str(tmp_path / "text.safetensors"))
    for path, visual, other in (("image", True, "token_embedding.weight"), ("text", False, "visual.conv1.weight")):
        for lib in (clipa, open_clip):
            model = lib.create_model(f"local-dir:{folder}", load_weights=False,
                                     **{f"pretrained_{path}_path": str(tmp_path / f"{path}.safetensors")})
            got = model.state_dict()
            tower = [k for k in sd if k != "logit_scale" and k.startswith("visual.") == visual]
            assert all(torch.equal(got[k], sd[k]) for k in tower), (lib.__name__, path)
            assert not torch.equal(got[other], sd[other]) and got["logit_scale"] != 3.0, (lib.__name__, path)


@covers("build_zero_shot_classifier", "build_zero_shot_classifier_legacy", "IMAGENET_CLASSNAMES",
        "OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD")
def test_zero_shot_helpers_and_lists_are_openclips(saved):
    """The ImageNet lists and statistics equal OpenCLIP's; the classifiers built from them, and
    from format strings, equal OpenCLIP's to 1e-6."""
    folder, ref = saved
    assert list(clipa.IMAGENET_CLASSNAMES) == list(open_clip.IMAGENET_CLASSNAMES)
    assert clipa.OPENAI_DATASET_MEAN == open_clip.OPENAI_DATASET_MEAN
    assert clipa.OPENAI_DATASET_STD == open_clip.OPENAI_DATASET_STD
    for name in ("OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES"):
        ours, theirs = getattr(clipa, name), getattr(open_clip, name)
        assert [t("dog") for t in ours] == [t("dog") for t in theirs], name
    model = clipa.create_model(str(folder)).eval()
    tokenizer = clipa.get_tokenizer(str(folder))
    classes = list(open_clip.IMAGENET_CLASSNAMES[:12])
    for templates in (open_clip.SIMPLE_IMAGENET_TEMPLATES, ["a photo of a {}.", "art of the {}."]):
        want = open_clip.build_zero_shot_classifier(ref, tokenizer, classes, templates, num_classes_per_batch=5)
        for got in (clipa.build_zero_shot_classifier(model, tokenizer, classes, templates, 5),
                    clipa.build_zero_shot_classifier(model, tokenizer, classes, templates, None),
                    clipa.build_zero_shot_classifier_legacy(model, tokenizer, classes, templates)):
            assert got.shape == want.shape == (64, 12)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # clipa's templates serve OpenCLIP's own function, and the other way round
    mixed = open_clip.build_zero_shot_classifier(ref, tokenizer, classes, clipa.SIMPLE_IMAGENET_TEMPLATES)
    torch.testing.assert_close(mixed, clipa.build_zero_shot_classifier(model, tokenizer, classes,
                                                                       open_clip.SIMPLE_IMAGENET_TEMPLATES))


@covers("list_models", "list_pretrained", "list_pretrained_tags_by_model", "list_pretrained_models_by_tag",
        "list_openai_models", "is_pretrained_cfg", "get_pretrained_cfg", "get_model_config", "get_cast_dtype",
        "get_input_dtype", "tokenize")
def test_listings_and_configs_are_openclips():
    """Every listing is OpenCLIP's restricted to what clipa builds; a tag's config is OpenCLIP's
    on every key clipa keeps; ``get_model_config`` is a dict OpenCLIP's ``CLIP`` builds into
    its own model (on the meta device); the precision dtypes are OpenCLIP's."""
    assert set(clipa.list_models()) - set(open_clip.list_models()) == {"clipa-tiny", "clipa-tiny-clipa"}
    pairs = clipa.list_pretrained()
    assert pairs and set(pairs) <= set(open_clip.list_pretrained())
    assert set(clipa.list_pretrained(as_str=True)) == {f"{m}:{t}" for m, t in pairs}
    for model, tag in pairs:
        assert set(clipa.list_pretrained_tags_by_model(model)) <= set(open_clip.list_pretrained_tags_by_model(model))
        assert set(clipa.list_pretrained_models_by_tag(tag)) <= set(open_clip.list_pretrained_models_by_tag(tag))
        assert clipa.is_pretrained_cfg(model, tag) and open_clip.is_pretrained_cfg(model, tag)
        want = open_clip.get_pretrained_cfg(model, tag)
        got = clipa.get_pretrained_cfg(model, tag)
        assert got and {k: want.get(k) for k in got} == got, (model, tag)
    assert clipa.is_pretrained_cfg("ViT-H-14-CLIPA", "DataComp1B") == open_clip.is_pretrained_cfg(
        "ViT-H-14-CLIPA", "DataComp1B") is True
    assert clipa.get_pretrained_cfg("ViT-B-32", "no-such-tag") == open_clip.get_pretrained_cfg("ViT-B-32", "x") == {}
    assert clipa.list_openai_models() and set(clipa.list_openai_models()) <= set(open_clip.list_openai_models())

    assert clipa.get_model_config("no-such-model") is open_clip.get_model_config("no-such-model") is None
    for name in (n for n in clipa.list_models() if not n.startswith("clipa-")):
        cfg, want = clipa.get_model_config(name), open_clip.get_model_config(name)
        for tower in ("vision_cfg", "text_cfg"):
            assert {k: cfg[tower][k] for k in want[tower] if k in cfg[tower]} == {
                k: v for k, v in want[tower].items() if k in cfg[tower]}, (name, tower)
        with torch.device("meta"):
            built = {k: v.shape for k, v in open_clip.model.CLIP(**cfg).state_dict().items()}
            ref = {k: v.shape for k, v in open_clip.model.CLIP(**want).state_dict().items()}
        assert built == ref, name

    for precision in (*clipa.hub.PRECISIONS, "other"):
        assert clipa.get_cast_dtype(precision) == open_clip.get_cast_dtype(precision), precision
        assert clipa.get_input_dtype(precision) == open_clip.get_input_dtype(precision), precision


@covers("add_model_config")
def test_add_model_config_registers_openclips_json(tmp_path, monkeypatch):
    """A config file in OpenCLIP's format (``open_clip.add_model_config``'s) becomes a model name
    that builds OpenCLIP's model."""
    from clipa.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the registry is global
    cfg = {**open_clip.get_model_config("ViT-B-16"), "embed_dim": 256}
    (tmp_path / "ViT-B-16-e256.json").write_text(json.dumps(cfg))
    (tmp_path / "notes.json").write_text("{}")  # not a model config: passed over, as OpenCLIP does
    clipa.add_model_config(tmp_path)
    assert "ViT-B-16-e256" in clipa.list_models() and "notes" not in clipa.list_models()
    with torch.device("meta"):
        got = {k: v.shape for k, v in clipa.create_model("ViT-B-16-e256", device="meta").state_dict().items()}
        want = {k: v.shape for k, v in open_clip.model.CLIP(**cfg).state_dict().items()}
    assert got == want and got["text_projection"] == (512, 256)


def _openclip_names() -> set[str]:
    return {n for n in dir(open_clip) if not n.startswith("_") and not isinstance(getattr(open_clip, n), ModuleType)}


def _readme_not_provided() -> dict[tuple[str, ...], str]:
    """The README's table of OpenCLIP names clipa does not provide: names -> reason."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("OpenCLIP's names that clipa does not provide", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split(" | ", 1) for line in section.splitlines()[2:]]
    return {tuple(re.findall(r"`(\w+)`", names)): reason.strip() for names, reason in rows}


def test_every_openclip_name_is_here_or_listed_as_not_provided():
    """Acceptance (issue 22): each public name of ``open_clip`` is in ``clipa`` (``dir`` lists it)
    with a test above holding its meaning to OpenCLIP's, or is in the README's table of names
    clipa does not provide, with the reason, and that table is ``clipa.api.NOT_PROVIDED``."""
    from clipa.api import NOT_PROVIDED

    assert _readme_not_provided() == NOT_PROVIDED
    names = _openclip_names()
    absent = {n for group in NOT_PROVIDED for n in group}
    assert absent <= names, f"not OpenCLIP names: {absent - names}"
    assert not [n for n in absent if hasattr(clipa, n)]
    provided = names - absent
    assert not provided - set(dir(clipa)), f"missing from clipa: {provided - set(dir(clipa))}"
    assert provided == COVERED, f"provided without a check: {provided - COVERED}; checked but not OpenCLIP's: " \
                                f"{COVERED - provided}"
    assert set(clipa.__all__) >= provided

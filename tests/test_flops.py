"""Analytic FLOPs against OpenCLIP's published table and against torch's FlopCounterMode."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import clipa
from clipa.cli import flops as flops_command
from clipa.config import ImageReductionConfig
from clipa.flops import pair_flops
from clipa.models import get_model_config
from clipa.reduction.image import num_kept

# OpenCLIP v3.3.0 docs/model_profile.csv (docs/reference.md#flops-per-pair): GFLOPs per pair, forward,
# each model at its own image size and text context: (total, image, text).
PUBLISHED = {
    "ViT-B-32": (14.78, 8.82, 5.96),
    "ViT-B-16": (41.09, 35.13, 5.96),
    "ViT-L-14": (175.33, 162.03, 13.30),
    "ViT-L-14-CLIPA": (167.50, 162.03, 5.47),
    "ViT-L-14-CLIPA-336": (387.39, 381.92, 5.47),
    "ViT-H-14": (381.68, 334.59, 47.09),
    "ViT-H-14-CLIPA": (354.02, 334.59, 19.43),
    "ViT-H-14-CLIPA-336": (800.88, 781.45, 19.43),
    "ViT-bigG-14": (1065.36, 967.50, 97.86),
    "ViT-bigG-14-CLIPA": (1007.93, 967.50, 40.44),
    "ViT-bigG-14-CLIPA-336": (2271.58, 2231.15, 40.44),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_matches_openclip_published_table(name):
    """Within 1% (in fact within the table's two-decimal rounding) for total, image and text."""
    f = pair_flops(get_model_config(name))
    for ours, theirs in zip((f.forward, f.image, f.text), PUBLISHED[name]):
        assert ours / 1e9 == pytest.approx(theirs, rel=0.01, abs=0.006)


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    # the math kernel runs attention as bmm, which the counter sees (the fused CPU kernel it misses)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


CASES = [  # model, image size, fraction of patches masked, text length
    ("clipa-tiny", 32, 0.0, 16),
    ("clipa-tiny-clipa", 48, 0.3, 8),
]


@pytest.mark.parametrize("name,size,ratio,length", CASES)
def test_agrees_with_flop_counter(name, size, ratio, length):
    """Forward per tower and a forward + backward step, against FlopCounterMode within 2%."""
    torch.set_num_threads(1)
    model = clipa.create_model(name, vision={"image_size": size})
    n = (size // model.visual.cfg.patch_size) ** 2
    reduction = ImageReductionConfig(strategy="random", ratio=ratio)
    kept = num_kept(reduction, n)
    model.train()
    model.visual.set_token_reduction(reduction)
    b = 2
    images = torch.randn(b, 3, size, size)
    text = torch.randint(1, 1000, (b, length))
    expected = pair_flops(model.cfg, size, kept, length)

    image_fwd = _counted(lambda: model.encode_image(images)) / b
    text_fwd = _counted(lambda: model.encode_text(text)) / b

    def step():
        img, txt, scale = model(images, text)
        (scale * (img * txt).sum()).backward()

    train = _counted(step) / b
    assert image_fwd == pytest.approx(expected.image, rel=0.02)
    assert text_fwd == pytest.approx(expected.text, rel=0.02)
    assert train == pytest.approx(expected.train_step, rel=0.02)
    assert expected.train_step == pytest.approx(3 * expected.forward, rel=0.02)


def test_masking_and_text_length_shrink_the_count():
    cfg = get_model_config("ViT-H-14-CLIPA")
    full = pair_flops(cfg, 224, None, 32)
    masked = pair_flops(cfg, 224, num_kept(ImageReductionConfig(strategy="random", ratio=0.3), 256), 32)
    assert masked.image_tokens == 180 and full.image_tokens == 257
    assert masked.patch_embed == full.patch_embed  # the embedding runs before patches are dropped
    assert masked.image < full.image
    assert pair_flops(cfg, 224, None, 8).text < full.text


@pytest.mark.parametrize("size,ratio", [(224, 0.3), (336, 0.4), (98, 0.75), (28, 0.9)])
def test_flops_command_counts_kept_patches_by_the_masking_rule(size, ratio, capsys):
    """``clipa flops --image-keep`` keeps what random masking at ``1 - keep`` keeps in training."""
    from clipa.cli import main

    n = (size // 14) ** 2
    assert main(["flops", "ViT-H-14-CLIPA", "--image-size", str(size), "--image-keep", str(1 - ratio)]) == 0
    kept = num_kept(ImageReductionConfig(strategy="random", ratio=ratio), n)
    assert f"{kept + 1} image tokens ({kept} of {n} patches + class)" in capsys.readouterr().out


def test_cli_prints_forward_and_training_step(capsys):
    parser = argparse.ArgumentParser()
    flops_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["flops", "ViT-H-14-CLIPA", "--image-size", "336", "--text-length", "32"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert float(total[1].replace(",", "")) == pytest.approx(PUBLISHED["ViT-H-14-CLIPA-336"][0], abs=0.01)
    assert float(total[2].replace(",", "")) == pytest.approx(3 * float(total[1].replace(",", "")), rel=0.01)


@pytest.mark.parametrize("argv,flag", [(["--image-size", "100"], "--image-size"),
                                       (["--text-length", "100"], "--text-length"),
                                       (["--image-size", "0"], "--image-size")])
def test_cli_refuses_sizes_the_model_cannot_take(argv, flag):
    """100 px is not a whole number of 16 px patches (the model would see 96 px) and 100 tokens
    do not fit a 77-token context: each is an error naming the flag, not a silently different count."""
    parser = argparse.ArgumentParser()
    flops_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["flops", "ViT-B-16", *argv])
    with pytest.raises(ValueError, match=flag):
        args.func(args)
    with pytest.raises(ValueError, match="patch size 16 .nearest: 96 or 112 px"):
        pair_flops(get_model_config("ViT-B-16"), 100)

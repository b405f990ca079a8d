"""CLIPA token reduction: hand-worked selections per rule, the vision tower's contract, text rows
in the tokenizer's format, and syntax masking against OpenCLIP + NLTK and with no data at all."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

import clipa
from clipa.config import ImageReductionConfig as Img
from clipa.config import TextReductionConfig as Txt
from clipa.reduction.image import TokenReduction, keep_indices, resize_image_size
from clipa.reduction.tagger import builtin_tag
from clipa.reduction.text import CaptionTokenizer, reduce_text, syntax_texts

CPU = torch.device("cpu")
CAPTION = "a photo of a big red dog running on the green grass"  # 12 CLIP tokens, one per word


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def windows(idx: torch.Tensor, gw: int, s: int = 2) -> list[tuple[int, int]]:
    return [(int(i) // gw // s, int(i) % gw // s) for i in idx]


# ----------------------------------------------------------------------------- image rules


def test_grid_fixed_keeps_top_left_of_every_window():
    idx = keep_indices(Img("grid"), 3, (4, 4), CPU)
    # 4x4 grid, windows {0,1,4,5} {2,3,6,7} {8,9,12,13} {10,11,14,15}: top-left of each
    assert idx.tolist() == [[0, 2, 8, 10]] * 3
    # odd grid: windows cut by the edge still keep one patch each (3 x 3 windows on 5 x 5)
    assert keep_indices(Img("grid", ratio=0.75), 1, (5, 5), CPU).tolist() == [[0, 2, 4, 10, 12, 14, 20, 22, 24]]
    # 3 x 3 windows (ratio 1 - 1/9) on 6 x 6: patches 0, 3, 18, 21
    assert keep_indices(Img("grid", keep=4), 1, (6, 6), CPU).tolist() == [[0, 3, 18, 21]]


def test_grid_random_position_one_per_window_and_varies_by_sample():
    idx = keep_indices(Img("grid", grid_position="random"), 32, (6, 8), CPU, gen())
    assert idx.shape == (32, 12)
    for row in idx:
        assert sorted(windows(row, 8)) == [(r, c) for r in range(3) for c in range(4)]
        offsets = {(int(i) // 8 % 2, int(i) % 8 % 2) for i in row}
        assert len(offsets) == 1  # the same place in every window of a sample
    assert len({tuple(r.tolist()) for r in idx}) == 4  # all four places occur over 32 samples
    assert torch.equal(idx, keep_indices(Img("grid", grid_position="random"), 32, (6, 8), CPU, gen()))


def test_grid_rejects_ratios_it_cannot_meet():
    with pytest.raises(ValueError, match="one patch per s x s window"):
        keep_indices(Img("grid", ratio=0.5), 1, (4, 4), CPU)


def test_block_keeps_one_contiguous_square_at_varying_places():
    idx = keep_indices(Img("block", keep=4), 200, (4, 4), CPU, gen())
    assert idx.shape == (200, 4)
    corners = set()
    for row in idx.tolist():
        top, left = row[0] // 4, row[0] % 4
        assert row == [top * 4 + left, top * 4 + left + 1, (top + 1) * 4 + left, (top + 1) * 4 + left + 1]
        corners.add((top, left))
    assert corners == {(t, l) for t in range(3) for l in range(3)}  # every place in reach
    # 25% of 14 x 14 = 49 patches: a 7 x 7 block
    sq = keep_indices(Img("block", ratio=0.75), 2, (14, 14), CPU, gen())[0]
    rows, cols = sq // 14, sq % 14
    assert len(sq) == 49 and rows.max() - rows.min() == 6 and cols.max() - cols.min() == 6


def test_random_keeps_sorted_distinct_indices_that_differ_between_samples():
    idx = keep_indices(Img("random", ratio=0.75), 8, (14, 14), CPU, gen())
    assert idx.shape == (8, 49)
    assert torch.equal(idx, idx.sort(dim=1).values)
    assert all(len(set(r.tolist())) == 49 for r in idx)
    assert len({tuple(r.tolist()) for r in idx}) == 8
    assert keep_indices(Img("random", keep=10), 2, (14, 14), CPU, gen()).shape == (2, 10)


def test_resize_and_none_keep_every_patch_and_resize_sizes():
    assert keep_indices(Img("resize", ratio=0.75), 2, (14, 14), CPU) is None
    assert keep_indices(Img("none"), 2, (14, 14), CPU) is None
    assert keep_indices(Img("random", ratio=0.0), 2, (14, 14), CPU) is None
    assert resize_image_size(Img("resize", ratio=0.75), 224, 16) == 112  # 49 patches
    assert resize_image_size(Img("resize", keep=16), 224, 16) == 64  # CLIPA L/16 at 64 px: 17 tokens
    assert resize_image_size(Img("resize", keep=36), 224, 16) == 96


@pytest.mark.parametrize("strategy", ["random", "grid", "block"])
def test_vision_tower_keeps_class_token_gathers_kept_patches_and_is_a_no_op_in_eval(strategy):
    model = clipa.create_model("clipa-tiny")  # 32 px, patch 4: an 8 x 8 grid
    vis = model.visual
    images = torch.randn(3, 3, 32, 32)
    seen = []
    vis.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.eval()
    full = vis(images)
    vis.set_token_reduction(Img(strategy, ratio=0.75), gen(1))
    assert torch.equal(vis(images), full)  # eval: every token
    vis.train()
    vis(images)
    x = seen[-1]
    idx = keep_indices(Img(strategy, ratio=0.75), 3, (8, 8), CPU, gen(1))
    assert idx.shape[1] == 16  # 25% of 64
    with torch.no_grad():
        patches = vis.conv1(images).flatten(2).transpose(1, 2) + vis.positional_embedding[1:]
        cls = vis.class_embedding + vis.positional_embedding[0]
        want = vis.ln_pre(torch.cat([cls.expand(3, 1, -1), patches.gather(1, idx[..., None].expand(-1, -1, 128))], 1))
    assert x.shape == (3, 17, 128)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)


def test_token_reduction_is_the_towers_module_and_follows_its_mode():
    """Set in eval mode it stays off until train(); None keeps every patch; the model config
    is never written."""
    model = clipa.create_model("clipa-tiny").eval()
    vis, images = model.visual, torch.randn(2, 3, 32, 32)
    vis.set_token_reduction(Img("random", ratio=0.5), gen(0))
    assert isinstance(vis.token_reduction, TokenReduction) and not vis.token_reduction.training
    seen = []
    vis.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    vis(images)
    model.train()
    vis(images)
    vis.set_token_reduction(None)
    vis(images)
    assert seen == [65, 33, 65]  # class token + 64, + 32, + 64
    assert model.cfg.vision == clipa.create_model("clipa-tiny").cfg.vision
    assert dict(model.state_dict()).keys() == dict(clipa.create_model("clipa-tiny").state_dict()).keys()


def test_setters_change_the_tower_not_the_shared_config():
    model = clipa.create_model("clipa-tiny")  # 32 px, text 16
    model.visual.set_image_size(48)
    model.set_context_length(8)
    assert (model.visual.image_size, model.context_length) == (48, 8)
    assert (model.cfg.vision.image_size, model.cfg.text.context_length) == (32, 16)
    assert model.visual.positional_embedding.shape[0] == 12 * 12 + 1


def test_unknown_strategies_name_the_valid_ones():
    with pytest.raises(ValueError, match="none, resize, random, grid, block"):
        keep_indices(Img("patchy"), 1, (4, 4), CPU)
    with pytest.raises(ValueError, match="none, resize, random, grid, block"):
        TokenReduction(Img("patchy"))
    with pytest.raises(ValueError, match="truncate, random, block, syntax"):
        reduce_text(["a dog"], clipa.get_tokenizer("ViT-B-32"), 8, Txt("shuffle"))


# ----------------------------------------------------------------------------- text rules


@pytest.fixture(scope="module")
def tok():
    return clipa.get_tokenizer("ViT-B-32")


def test_truncate_is_the_tokenizer_and_hand_worked(tok):
    ids = tok.encode(CAPTION)[0]
    out = reduce_text([CAPTION], tok, 8, Txt("truncate"))
    assert out.dtype == torch.long and out.shape == (1, 8)
    assert out[0].tolist() == [tok.sot_token_id, *ids[:6], tok.eot_token_id]
    assert torch.equal(out, tok([CAPTION], context_length=8))


def test_random_keeps_order_and_differs_between_captions(tok):
    ids = tok.encode(CAPTION)[0]
    out = reduce_text([CAPTION] * 16, tok, 8, Txt("random"), gen())
    rows = set()
    for row in out.tolist():
        assert row[0] == tok.sot_token_id and row[7] == tok.eot_token_id
        kept = row[1:7]
        it = iter(ids)
        assert all(t in it for t in kept)  # a subsequence: original order
        rows.add(tuple(kept))
    assert len(rows) > 8
    assert torch.equal(out, reduce_text([CAPTION] * 16, tok, 8, Txt("random"), gen()))


def test_block_keeps_one_contiguous_run(tok):
    ids = tok.encode(CAPTION)[0]
    out = reduce_text([CAPTION] * 16, tok, 8, Txt("block"), gen())
    starts = set()
    for row in out.tolist():
        kept = row[1:7]
        start = [i for i in range(len(ids) - 5) if ids[i:i + 6] == kept]
        assert start, kept
        starts.add(start[0])
    assert len(starts) > 3


def test_caption_tokenizer_seeds_each_batch_by_its_captions_and_pickles(tok):
    """The loaders' tokenize step: the generator is seeded by seed * 2^32 + crc32 of the
    captions joined by \x1f, so a batch's draws need no state; a pickled copy (a spawned
    loader worker) gives the same rows."""
    captions = [CAPTION, "a small brown dog jumps over a log in the park today"]
    tokenize = CaptionTokenizer(tok, 8, Txt("random"), seed=3)
    digest = zlib.crc32(f"{captions[0]}\x1f{captions[1]}".encode())
    want = reduce_text(captions, tok, 8, Txt("random"), gen(3 * 2**32 + digest))
    assert torch.equal(tokenize(captions), want)
    assert torch.equal(pickle.loads(pickle.dumps(tokenize))(captions), want)
    assert not torch.equal(tokenize(captions[::-1]), want.flip(0))  # another batch, other draws


def test_short_captions_pass_whole_and_rows_are_padded(tok):
    out = reduce_text(["a dog", "a photo of a cat"], tok, 8, Txt("random"), gen())
    a, b = tok.encode(["a dog", "a photo of a cat"])
    assert out.tolist() == [[tok.sot_token_id, *a, tok.eot_token_id, 0, 0, 0, 0],
                            [tok.sot_token_id, *b, tok.eot_token_id, 0]]
    assert torch.equal(reduce_text(["a dog"], tok, 8, Txt("block")), out[:1])


def test_syntax_keeps_nouns_and_adjectives(tok):
    # nouns photo, dog, grass; adjectives big, red, green: exactly the 6 slots of 8 tokens
    assert syntax_texts([CAPTION], 6) == ["photo big red dog green grass"]
    out = reduce_text([CAPTION], tok, 8, Txt("syntax"))
    assert torch.equal(out, tok(["photo big red dog green grass"], context_length=8))


@pytest.mark.parametrize("text, word, tag", [
    ("A man rides a bike .", "rides", "VBZ"),  # pattern alone: NNS
    ("a dog with a stick", "stick", "NN"),  # pattern alone: VB
    ("A girl dancing in the rain", "dancing", "VBG"),  # pattern alone: NN
    ("Two people are dancing", "dancing", "VBG"),
    ("A boy on top of the car", "top", "NN"),  # pattern alone: JJ
    ("Little girl in a pink t-shirt", "Little", "JJ"),  # pattern alone: NNP
    ("Little girl in a pink t-shirt", "t-shirt", "NN"),  # pattern alone: JJ
    ("A dog walks past a tree", "past", "IN"),  # pattern alone: JJ
    ("A brown dog walks on the grass", "brown", "JJ"),  # NLTK says NN: not copied
])
def test_builtin_tagger_corrections(text, word, tag):
    assert dict(builtin_tag(text))[word] == tag


def test_syntax_with_nltk_matches_openclip(shared_data, tok, monkeypatch):
    import json
    import tarfile

    monkeypatch.setenv("NLTK_DATA", str(shared_data / "nltk"))
    import nltk
    monkeypatch.setattr(nltk.data, "path", [str(shared_data / "nltk")])
    oc = pytest.importorskip("open_clip.tokenizer")
    monkeypatch.setattr(oc, "_nltk_init", True)  # data is local: no download attempts
    with tarfile.open(shared_data / "flickr8k" / "test-0.tar") as tar:
        caps = [c for m in tar.getmembers()[:300] if m.name.endswith(".json")
                for c in json.load(tar.extractfile(m))["captions"]]
    caps.append(CAPTION)
    ref = oc.SimpleTokenizer()
    for length in (8, 16):
        want = oc.syntax_mask_tokenize(caps, length, ref.sot_token_id, ref.eot_token_id, ref.encode)
        got = reduce_text(caps, tok, length, Txt("syntax", tagger="nltk"))
        assert torch.equal(got, want)
    assert syntax_texts([CAPTION], 6, "nltk") == ["photo big red dog green grass"]


def test_every_rule_runs_offline_without_nltk_data(tmp_path):
    """A fresh process with no NLTK data and every network connection refused."""
    code = textwrap.dedent(f"""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import torch, clipa
        from clipa.config import ImageReductionConfig, TextReductionConfig
        from clipa.reduction.image import keep_indices
        from clipa.reduction.text import reduce_text
        tok = clipa.get_tokenizer("ViT-B-32")
        for s in ("truncate", "random", "block", "syntax"):
            out = reduce_text([{CAPTION!r}], tok, 8, TextReductionConfig(s))
            assert out.shape == (1, 8), s
        for s in ("random", "grid", "block"):
            keep_indices(ImageReductionConfig(s, ratio=0.75), 2, (14, 14), torch.device("cpu"))
        try:
            reduce_text(["a dog"], tok, 8, TextReductionConfig("syntax", tagger="nltk"))
        except RuntimeError as e:
            assert "NLTK_DATA" in str(e)
        else:
            raise AssertionError("the nltk tagger found data in an empty NLTK_DATA")
        print("ok")
    """)
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_show_masks_writes_a_picture(tmp_path):
    from PIL import Image

    from clipa.viz import show_masks

    src = tmp_path / "img.png"
    Image.fromarray((torch.rand(100, 140, 3) * 255).byte().numpy()).save(src)
    out = show_masks(src, tmp_path / "masks.png", 0.75, CAPTION, 8)
    pic = Image.open(out)
    assert pic.width > 6 * 224 and pic.height > 224


@pytest.mark.parametrize("grid", [(4, 4), (7, 7), (14, 14), (5, 8)])
@pytest.mark.parametrize("cfg", [
    Img(strategy="none"),
    Img(strategy="resize", ratio=0.75),
    Img(strategy="random", ratio=0.3),
    Img(strategy="random", keep=5),
    Img(strategy="grid"),
    Img(strategy="grid", grid_position="random"),
    Img(strategy="block", ratio=0.75),
    Img(strategy="block", keep=6),
])
def test_num_seen_is_what_the_tower_keeps(cfg, grid):
    """The planner and FLOP counts use num_seen; it must be the width keep_indices gives."""
    from clipa.reduction.image import keep_indices, num_seen

    idx = keep_indices(cfg, 3, grid, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert num_seen(cfg, grid) == (grid[0] * grid[1] if idx is None else idx.shape[1])


def test_stage_image_size_follows_resize_only_when_no_size_is_given():
    from clipa.reduction.image import stage_image_size

    resize = Img(strategy="resize", ratio=0.75)
    assert stage_image_size(resize, None, 224, 16) == 112
    assert stage_image_size(resize, 96, 224, 16) == 96
    assert stage_image_size(Img(strategy="random", ratio=0.5), None, 224, 16) == 224

"""The built-in compositional world: captions agree with scenes, held-out parts stay held out,
the loader resumes exactly, and a short training run beats chance on every zero-shot task."""

import pytest
import torch

from clipa.data import world
from clipa.data.world import Scene, WorldLoader, held_out, render

RED, BLUE = world.COLOURS.index("red"), world.COLOURS.index("blue")
RING, SWAN = world.KINDS.index("ring"), world.KINDS.index("swan")
# A small red ring (digit 0) in the left column, a big blue swan (digit 2) in the right one.
HAND = Scene(kinds=[RING, SWAN], colours=[RED, BLUE], sizes=[0, 1], columns=[0, 2], tops=[3, 10], glyphs=[0, 0])


def _words(captions):
    return {w for c in captions for w in c.replace(".", " ").split()}


def test_hand_checked_scene_captions():
    assert HAND.key() == "ring-red-small@0|swan-blue-big@2"
    captions = [HAND.caption(t, verb="sits") for t in world.TRAIN_TEMPLATES[2]]
    assert captions == [
        "a small red ring sits left of a big blue swan",
        "a big blue swan sits right of a small red ring",
        "left of a big blue swan sits a small red ring",
        "right of a small red ring sits a big blue swan",
        "a picture of a small red ring and a big blue swan from left to right",
        "there is a big blue swan and left of it a small red ring",
    ]
    true, swapped = world.relation_prompts(HAND)
    assert true == ["an image where the small red ring is left of the big blue swan.",
                    "a photo in which the big blue swan is right of the small red ring."]
    assert swapped == ["an image where the big blue swan is left of the small red ring.",
                       "a photo in which the small red ring is right of the big blue swan."]
    one = Scene([SWAN], [BLUE], [1], [1], [0], [0])
    assert one.caption("{p} {v} {A}", verb="floats") == "in the middle floats a big blue swan"


def test_hand_checked_scene_pixels():
    """The left column's ink is red and small, the right column's blue and bigger."""
    glyphs = world._Glyphs("train")
    scene = Scene([RING, SWAN], [RED, BLUE], [0, 1], [0, 2], [3, 10],
                  [int(glyphs.pools[RING][0]), int(glyphs.pools[SWAN][0])])
    img = render([scene], glyphs, world.CANVAS)[0] * world.digits._STD + world.digits._MEAN  # [3, 32, 32] in [0, 1]
    left, middle, right = img[:, :, :11], img[:, :, 11:21], img[:, :, 21:]
    assert middle.max() == 0  # nothing in the empty middle column
    ink_left, ink_right = left.sum(dim=(1, 2)), right.sum(dim=(1, 2))  # [3] per channel
    assert ink_left.argmax() == 0 and ink_right.argmax() == 2  # red, blue
    assert (right.amax(0) > 0.2).sum() > 1.5 * (left.amax(0) > 0.2).sum()  # big vs small
    rows = (left.amax(dim=(0, 2)) > 0).nonzero()[:, 0]
    assert rows.min() >= 3 and rows.max() < 3 + world.SIZE_PX[0]  # drawn at its top row


def _parse(key):
    objects = []
    for part in key.split("|"):
        attrs, column = part.split("@")
        kind, colour, size = attrs.split("-")
        objects.append((kind, colour, size, int(column)))
    return objects


def test_training_captions_agree_with_scenes():
    """Every caption names each object with its own attributes, once, in a template's frame."""
    loader = WorldLoader(8, 256, lambda c: torch.zeros(len(c), 1), seed=3)
    for index in range(4):
        scenes, captions = loader.global_batch(index)
        for scene, caption in zip(scenes, captions):
            objects = _parse(scene.key())
            assert [o[3] for o in objects] == sorted(o[3] for o in objects)  # listed left to right
            for kind, colour, size, _ in objects:
                assert f"{size} {colour} {kind}" in caption
            assert sum(caption.count(k) for k in world.KINDS) == len(objects)
            if len(objects) == 1:
                assert caption == f"a {size} {colour} {kind}" or world.PLACES[objects[0][3]] in caption


def test_held_out_pairs_and_wording_never_in_training():
    loader = WorldLoader(8, 512, lambda c: torch.zeros(len(c), 1), seed=0)
    seen = set()
    for index in range(10):
        scenes, captions = loader.global_batch(index)
        for scene in scenes:
            seen |= set(zip(scene.kinds, scene.colours))
        # Words only the evaluation's prompts use: its frames never occur in training.
        assert not _words(captions) & {"image", "photo", "where", "which", "shows", "something", "object", "row."}
    assert len(seen) == 40 and not any(held_out(k, c) for k, c in seen)
    evaluation = world.eval_world(8)
    assert len(evaluation.retrieval_captions) == world.EVAL_RETRIEVAL
    gen = torch.Generator().manual_seed(world.EVAL_SEED)
    for scene in world.sample_scenes(200, gen, world._Glyphs("test"), held=True):
        assert all(held_out(k, c) for k, c in zip(scene.kinds, scene.colours))


def test_hard_negative_partners():
    """About a quarter of the pairs are mirror images, a quarter differ in one object's kind only."""
    loader = WorldLoader(8, 1024, lambda c: torch.zeros(len(c), 1), seed=1)
    scenes, _ = loader.global_batch(0)
    pairs = [(scenes[i - 1], scenes[i]) for i in range(1, 1024, 2)]
    mirrored = [(a, b) for a, b in pairs if len(a.kinds) > 1 and b == a.mirrored()]
    rekinded = [(a, b) for a, b in pairs if len(a.kinds) == len(b.kinds)
                and sum(x != y for x, y in zip(a.kinds, b.kinds)) == 1
                and (a.colours, a.sizes, a.columns, a.tops) == (b.colours, b.sizes, b.columns, b.tops)]
    assert 50 < len(mirrored) < 120 and 90 < len(rekinded) < 170
    a, b = mirrored[0]
    assert a.kinds == b.kinds[::-1] and a.columns == b.columns
    assert all(not held_out(k, c) for _, b in rekinded for k, c in zip(b.kinds, b.colours))


def test_loader_resumes_exactly_and_splits_by_rank():
    from clipa.tokenizer import clip_tokenizer

    tok = clip_tokenizer(32)
    whole = iter(WorldLoader(16, 8, tok, seed=5))
    batches = [next(whole) for _ in range(5)]
    first = WorldLoader(16, 8, tok, seed=5)
    it = iter(first)
    for _ in range(3):
        next(it)
    resumed = iter(WorldLoader(16, 8, tok, seed=5, state=first.state_dict()))
    for expected in batches[3:]:
        got = next(resumed)
        assert got["keys"] == expected["keys"]
        assert torch.equal(got["images"], expected["images"]) and torch.equal(got["text"], expected["text"])
    ranks = [next(iter(WorldLoader(16, 4, tok, seed=5, rank=r, world_size=2))) for r in range(2)]
    assert ranks[0]["keys"] + ranks[1]["keys"] == batches[0]["keys"]
    assert torch.equal(torch.cat([r["images"] for r in ranks]), batches[0]["images"])


def test_trainer_on_world_beats_chance(tmp_path):
    """A minute-sized run beats chance by these margins on every zero-shot task and retrieval."""
    from clipa.config import load_config
    from clipa.eval.world import CHANCE
    from clipa.train.trainer import Trainer

    cfg = load_config(None, [
        "data.source=world", "model_overrides.text.context_length=32",
        "stage.samples=6144", "stage.batch_size=128", "stage.lr=2e-3", "stage.warmup=10",
        "train.progress=false", f"train.output_dir={tmp_path}",
    ])
    metrics = Trainer(cfg).fit()[-1]
    margin = {"object_acc1": 0.2, "colour_acc1": 0.2, "size_acc1": 0.15, "relation_acc1": 0.05}
    for task, chance in CHANCE.items():
        assert metrics[task] > chance + margin[task], (task, metrics[task])
    assert metrics["image_retrieval_recall@5"] > 5 * 5 / world.EVAL_RETRIEVAL

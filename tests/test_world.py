"""The built-in compositional world: captions agree with scenes, held-out parts stay held out,
the loader resumes exactly, and a short training run learns the attributes."""

import pytest
import torch

import clipa
from clipa.data import world
from clipa.data.world import Scene, WorldLoader, held_out, render

RED, BLUE = world.COLOURS.index("red"), world.COLOURS.index("blue")
RING, SWAN = world.KINDS.index("ring"), world.KINDS.index("swan")
# A small red ring (digit 0) in the top left cell, a big blue swan (digit 2) at the bottom right.
HAND = Scene(kinds=[RING, SWAN], colours=[RED, BLUE], sizes=[0, 1], cells=[0, 3], offsets=[(4, 0), (0, 0)],
             glyphs=[0, 0])


def _words(captions):
    return {w for c in captions for w in c.replace(".", " ").split()}


def test_hand_checked_scene_captions():
    assert HAND.key() == "ring-red-small@0|swan-blue-big@3"
    captions = [HAND.caption(t, verb="sits") for t in world.TRAIN_TEMPLATES[2]]
    assert captions == [
        "a small red ring sits left of a big blue swan",
        "a big blue swan sits right of a small red ring",
        "left of a big blue swan sits a small red ring",
        "there is a small red ring and right of it a big blue swan",
        "a picture of a small red ring and a big blue swan",
    ]
    true, swapped = world.relation_prompts(HAND)
    assert true == ["an image where the small red ring is left of the big blue swan.",
                    "a photo in which the big blue swan is right of the small red ring."]
    assert swapped == ["an image where the big blue swan is left of the small red ring.",
                       "a photo in which the small red ring is right of the big blue swan."]
    column = Scene([SWAN, RING], [BLUE, RED], [1, 0], [1, 3], [(0, 0), (0, 4)], [0, 0])
    assert column.caption("{A} {v} {ab} {B}", verb="floats") == "a big blue swan floats above a small red ring"
    assert column.caption("{pA} {v} {A} , then {B} and {C}".replace(" and {C}", "")) == \
        "at the top right sits a big blue swan , then a small red ring"
    one = Scene([SWAN], [BLUE], [1], [2], [(0, 0)], [0])
    assert one.caption("{pA} {v} {A}", verb="rests") == "at the bottom left rests a big blue swan"


def test_hand_checked_scene_pixels():
    """The top left cell's ink is red and small, the bottom right cell's blue and bigger."""
    glyphs = world._Glyphs("train")
    scene = Scene([RING, SWAN], [RED, BLUE], [0, 1], [0, 3], [(4, 0), (0, 0)],
                  [int(glyphs.pools[RING][0]), int(glyphs.pools[SWAN][0])])
    img = render([scene], glyphs, world.CANVAS)[0] * world.GREY.std[0] + world.GREY.mean[0]  # [3, 32, 32] in [0, 1]
    top_left, bottom_right = img[:, :16, :16], img[:, 16:, 16:]
    assert img[:, :16, 16:].max() == 0 and img[:, 16:, :16].max() == 0  # the other two cells are empty
    assert top_left.sum(dim=(1, 2)).argmax() == 0 and bottom_right.sum(dim=(1, 2)).argmax() == 2  # red, blue
    assert (bottom_right.amax(0) > 0.2).sum() > 2 * (top_left.amax(0) > 0.2).sum()  # big vs small
    rows = (top_left.amax(dim=(0, 2)) > 0).nonzero()[:, 0]
    assert rows.min() >= 4 and rows.max() < 4 + world.SIZE_PX[0]  # drawn 4 px down its cell


def _parse(key):
    objects = []
    for part in key.split("|"):
        attrs, cell = part.split("@")
        kind, colour, size = attrs.split("-")
        objects.append((kind, colour, size, int(cell)))
    return objects


def test_training_captions_agree_with_scenes():
    """Every caption names each object with its own attributes, once, in a template's frame."""
    loader = WorldLoader(8, 256, lambda c: torch.zeros(len(c), 1), seed=3)
    for index in range(4):
        scenes, captions = loader.global_batch(index)
        for scene, caption in zip(scenes, captions):
            objects = _parse(scene.key())
            assert [o[3] for o in objects] == sorted(o[3] for o in objects)  # in reading order
            for kind, colour, size, _ in objects:
                assert f"{size} {colour} {kind}" in caption
            assert sum(caption.count(k) for k in world.KINDS) == len(objects)
            if len(objects) == 1:
                assert caption == f"a {size} {colour} {kind}" or world.PLACES[objects[0][3]] in caption
            relations = ("left of", "right of", "above", "below")
            if len(objects) == 2 and any(r in caption for r in relations):
                a, b = (f"{o[2]} {o[1]} {o[0]}" for o in objects)
                ab, ba = world.relation(objects[0][3], objects[1][3]), world.relation(objects[1][3], objects[0][3])
                # "A ab B", "B ba A", "ab B ... A" or "A and ba it B": never a wrong relation.
                assert f"{ab} a {b}" in caption or f"{ba} a {a}" in caption or f"{ba} it a {b}" in caption


def test_held_out_pairs_and_wording_never_in_training():
    loader = WorldLoader(8, 512, lambda c: torch.zeros(len(c), 1), seed=0)
    seen = set()
    for index in range(10):
        scenes, captions = loader.global_batch(index)
        for scene in scenes:
            seen |= set(zip(scene.kinds, scene.colours))
        # Words only the evaluation's prompts use: its frames never occur in training.
        assert not _words(captions) & {"image", "photo", "where", "which", "shows", "something", "object", "row."}
    assert len(seen) == 50 and not any(held_out(k, c) for k, c in seen)
    evaluation = world.eval_world(8)
    assert len(evaluation.retrieval_captions) == world.EVAL_RETRIEVAL
    gen = torch.Generator().manual_seed(world.EVAL_SEED)
    for scene in world.sample_scenes(200, gen, world._Glyphs("test"), held=True):
        assert all(held_out(k, c) for k, c in zip(scene.kinds, scene.colours))


def test_hard_negative_partners():
    """Every second scene is its neighbour mirrored (a third of the pairs) or with one kind changed."""
    loader = WorldLoader(8, 1024, lambda c: torch.zeros(len(c), 1), seed=1)
    scenes, _ = loader.global_batch(0)
    pairs = [(scenes[i - 1], scenes[i]) for i in range(1, 1024, 2)]
    mirrored = [(a, b) for a, b in pairs if len(a.kinds) > 1 and b == a.mirrored()]
    rekinded = [(a, b) for a, b in pairs if len(a.kinds) == len(b.kinds)
                and sum(x != y for x, y in zip(a.kinds, b.kinds)) == 1
                and (a.colours, a.sizes, a.cells, a.offsets) == (b.colours, b.sizes, b.cells, b.offsets)]
    assert 130 < len(mirrored) < 210 and 300 < len(rekinded) < 380 and len(mirrored) + len(rekinded) == 512
    a, b = mirrored[0]
    assert a.kinds == b.kinds[::-1] and a.cells == b.cells
    assert all(not held_out(k, c) for _, b in rekinded for k, c in zip(b.kinds, b.colours))


def test_attribute_tasks_vary_one_attribute_of_the_true_phrase(monkeypatch):
    """Hand-worked: text embeddings one-hot the size, colour and kind words of a prompt; three
    images, one seen as the wrong kind and one as the wrong size. Each task's candidates
    differ from the true phrase in its own attribute only, so only that task misses."""
    import torch.nn.functional as F

    import clipa.eval.world as eval_world_mod

    vocab = world.SIZES + world.COLOURS + world.KINDS

    def one_hot(words):
        return F.normalize(torch.tensor([[float(w in words) for w in vocab]]), dim=-1)

    def encode_texts(model, tokenizer, texts, device, dtype=None):
        return torch.cat([one_hot(t.rstrip(".").split()) for t in texts])

    monkeypatch.setattr(eval_world_mod, "encode_texts", encode_texts)
    # (size, colour, kind) of each scene, and what its image embedding says.
    truth = [("small", "red", "ring"), ("big", "blue", "swan"), ("small", "green", "pole")]
    seen = [("small", "red", "ring"), ("big", "blue", "chair"), ("big", "green", "pole")]
    labels = {"size": torch.tensor([world.SIZES.index(s) for s, _, _ in truth]),
              "colour": torch.tensor([world.COLOURS.index(c) for _, c, _ in truth]),
              "object": torch.tensor([world.KINDS.index(k) for _, _, k in truth])}
    img = torch.cat([one_hot(words) for words in seen])
    got = eval_world_mod.attribute_accuracy(None, None, img, labels, "cpu")
    assert got == {"object_acc1": 2 / 3, "colour_acc1": 1.0, "size_acc1": 2 / 3}


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


# The studies' micro-64 (benchmarks/study.py): two layers per tower, width 64, heads of 16,
# 8 px patches (16 image tokens), 24-token captions.
MICRO = ["model_overrides.embed_dim=64", "model_overrides.vision.width=64", "model_overrides.vision.layers=2",
         "model_overrides.vision.head_width=16", "model_overrides.vision.patch_size=8",
         "model_overrides.text.width=64", "model_overrides.text.heads=4", "model_overrides.text.layers=2",
         "model_overrides.text.context_length=24"]


def _train_on_world(tmp_path, samples: int, warmup: int = 10) -> dict:
    from clipa.config import load_config
    from clipa.train.trainer import Trainer

    cfg = load_config(None, ["data.source=world", *MICRO, f"stage.samples={samples}", "stage.batch_size=128",
                             "stage.lr=3e-3", f"stage.warmup={warmup}", "train.seed=0", "train.progress=false",
                             f"train.output_dir={tmp_path}"])
    return Trainer(cfg).fit()[-1]


def test_short_run_learns_colour_size_and_retrieval(tmp_path):
    """64 steps of 128 (about 15 s on one idle core): colour, size and retrieval well above chance.

    Object identity on held-out kind-colour pairs and left/right/above/below relations are not
    asserted here: they come after hundreds of steps, not within seconds (clipa.data.world's
    docstring and the README's world section give the figures). The slow test below asserts
    them after 1,024 steps."""
    from clipa.eval.world import CHANCE

    metrics = _train_on_world(tmp_path, 8192)
    assert metrics["colour_acc1"] > CHANCE["colour_acc1"] + 0.5
    assert metrics["size_acc1"] > CHANCE["size_acc1"] + 0.1
    assert metrics["image_retrieval_recall@5"] > 5 * 5 / world.EVAL_RETRIEVAL  # 5x chance


@pytest.mark.slow
def test_a_few_minutes_beat_chance_on_every_task(tmp_path):
    """1,024 steps of 128 (about 4 min on two cores): every zero-shot task above chance by a
    stated margin, on held-out kind-colour pairs, glyphs and wording.

    Measured with this model one run at a time (``benchmarks/study.py``'s ``run``, one thread,
    captions then in 32 tokens): object 49.2% and 43.8% after 1,024 steps (seeds 0, 2; chance
    10%), 39.8%, 48.3% and 28.5% after 768 (seeds 0-2); relation 86.5% and 79.3% (chance 50%);
    colour and size 100%. The margins sit under the worst seed at 1,024 steps: object above
    30%, relation above 65%."""
    from clipa.eval.world import CHANCE

    metrics = _train_on_world(tmp_path, 1024 * 128, warmup=20)
    assert metrics["object_acc1"] > CHANCE["object_acc1"] + 0.2
    assert metrics["colour_acc1"] > CHANCE["colour_acc1"] + 0.7
    assert metrics["size_acc1"] > CHANCE["size_acc1"] + 0.4
    assert metrics["relation_acc1"] > CHANCE["relation_acc1"] + 0.15
    assert metrics["image_retrieval_recall@5"] > 50 * 5 / world.EVAL_RETRIEVAL  # 50x chance


def test_evaluation_renders_at_the_towers_current_size(monkeypatch):
    """After a stage moved the tower to another resolution, the world is evaluated at that
    resolution, not the config's (which setters leave alone)."""
    import clipa.eval.world as eval_world_mod
    from clipa.tokenizer import tokenizer_for

    model = clipa.create_model("clipa-tiny", text={"context_length": 32})
    model.visual.set_image_size(48)
    sizes = []
    real = eval_world_mod.eval_world
    monkeypatch.setattr(eval_world_mod, "eval_world", lambda size: sizes.append(size) or real(size))
    eval_world_mod.evaluate_world(model, tokenizer_for(model), "cpu")
    assert sizes == [48] and model.cfg.vision.image_size == 32


def test_evaluation_honours_max_samples_and_dtype(monkeypatch):
    """``max_samples`` keeps that many of each held-out set, evenly spaced (the world's three
    sets: 3 + 3 + 3 of them here), and every encoder call runs in the runtime's dtype."""
    import clipa.eval.world as eval_world_mod
    from clipa.tokenizer import tokenizer_for

    model = clipa.create_model("clipa-tiny", text={"context_length": 32})
    dtypes, counts = [], []
    real_images, real_texts = eval_world_mod.encode_images, eval_world_mod.encode_texts

    def images(model, batches, device, dtype=None, **kw):
        dtypes.append(dtype)
        feats, extras = real_images(model, batches, device, dtype, **kw)
        counts.append(len(feats))
        return feats, extras

    def texts(*args, dtype=None, **kw):
        dtypes.append(dtype)
        return real_texts(*args, dtype=dtype, **kw)

    monkeypatch.setattr(eval_world_mod, "encode_images", images)
    monkeypatch.setattr(eval_world_mod, "encode_texts", texts)
    got = eval_world_mod.evaluate_world(model, tokenizer_for(model), "cpu", 8, torch.bfloat16, max_samples=3)
    assert counts == [3, 3, 3]
    assert set(dtypes) == {torch.bfloat16}
    assert got["samples"]["scored"] == 9 and "evenly spaced" in got["samples"]["drawn"]
    assert 0 <= got["object_acc1"] <= 1

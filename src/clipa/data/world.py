"""A built-in compositional world: scenes of one to three coloured objects, captioned.

The microscope for CLIPA's and BASIC's claims on two CPU cores. Each object has an identity
(one of ten kinds, drawn as a real handwritten digit from scikit-learn's set), a colour, a
size and a place (left, middle or right column of a 32 px canvas). Kinds are named by nouns
("ring" for the digit 0, "swan" for 2, ...), colours and sizes by adjectives, so a
part-of-speech tagger sees what real captions have: content in nouns and adjectives, filler
verbs ("sits", "floats") and articles, relations ("left of") in word order. Captions come
from templates that put the content early or late, so truncation, random, block and syntax
text masking keep different information; small objects span about 2x2 patches of 4 px, so
image masking can hide them.

Held out from training, for the zero-shot evaluation:
- the glyphs: 20% of the handwritten digits (the same split as ``data.digits``);
- attribute combinations: kind k never appears in colour c when ``(k + c) % 3 == 0``
  (20 of the 60 pairs); every evaluation object has such a pair;
- the wording: evaluation prompts and retrieval captions use templates never used in training.

Half the training scenes come with a hard negative in the same batch: the same scene with the
objects' sides swapped, or with one object's kind changed. Colour, size and count tell most
scenes of a batch apart; without such pairs a small CLIP learns them and matches captions as
bags of words, never needing the shape of a digit or the order of "A left of B".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from . import digits

KINDS = ["ring", "pole", "swan", "ear", "chair", "hook", "snail", "axe", "snowman", "balloon"]  # digit 0..9
COLOURS = ["red", "green", "blue", "yellow", "purple", "white"]
RGB = torch.tensor([[1.0, 0.15, 0.1], [0.15, 0.85, 0.15], [0.2, 0.35, 1.0],
                    [1.0, 0.9, 0.1], [0.65, 0.2, 0.9], [1.0, 1.0, 1.0]])
SIZES = ["small", "big"]
SIZE_PX = [8, 12]
PLACES = ["on the left", "in the middle", "on the right"]
VERBS = ["sits", "stands", "rests", "floats"]
CANVAS = 32
# Left edge of an object per size and column, and its top row: multiples of 4, so a glyph
# always covers whole 4 px patches the same way (a tiny ViT learns shapes many times faster
# than when they straddle patch borders at random). Big objects in neighbouring columns
# may overlap by 4 px, mostly blank glyph margin.
LEFT_PX = {8: [4, 12, 20], 12: [0, 12, 20]}
ALIGN = 4
PARTNER_PROB = 0.5


def held_out(kind: int, colour: int) -> bool:
    """Attribute pairs never seen in training (each kind misses two colours)."""
    return (kind + colour) % 3 == 0


# Training templates: {A}, {B}, {C} are the objects from left to right ("a small red ring").
TRAIN_TEMPLATES = {
    1: ["{A} {v} {p}", "{p} {v} {A}", "a picture of {A} {p}", "there is {A} {p}", "{A}"],
    2: ["{A} {v} left of {B}", "{B} {v} right of {A}", "left of {B} {v} {A}", "right of {A} {v} {B}",
        "a picture of {A} and {B} from left to right", "there is {B} and left of it {A}"],
    3: ["{A} , {B} and {C} from left to right", "from right to left : {C} , {B} and {A}",
        "{A} {v} left of {B} and {C} {v} on the right", "a picture of {A} , {B} and {C} in a row",
        "{B} {v} right of {A} and left of {C}"],
}

# Held out: the evaluation's wording only.
EVAL_TEMPLATES = {
    "object": ["an image of a {c}.", "a photo that shows a {c}."],
    "colour": ["an image of something {c}.", "a photo of a {c} object."],
    "size": ["an image of a {c} object.", "a photo of something {c}."],
}
RELATION_TEMPLATES = ["an image where {A} is left of {B}.", "a photo in which {B} is right of {A}."]
RETRIEVAL_TEMPLATES = {
    1: "an image where {A} is {p}.",
    2: "an image where {A} is left of {B}.",
    3: "an image where {A} , {B} and {C} are in a row from left to right.",
}
CLASSNAMES = {"object": KINDS, "colour": COLOURS, "size": SIZES}


@dataclass
class Scene:
    """Objects from left to right: kind, colour, size index, column and top row each."""

    kinds: list[int]
    colours: list[int]
    sizes: list[int]
    columns: list[int]
    tops: list[int]
    glyphs: list[int]

    def phrase(self, i: int, article: str = "a") -> str:
        return f"{article} {SIZES[self.sizes[i]]} {COLOURS[self.colours[i]]} {KINDS[self.kinds[i]]}"

    def caption(self, template: str, verb: str = "sits", article: str = "a") -> str:
        names = {k: self.phrase(i, article) for i, k in enumerate("ABC"[:len(self.kinds)])}
        return template.format(v=verb, p=PLACES[self.columns[0]], **names)

    def key(self) -> str:
        """``kind-colour-size@column`` per object, e.g. ``ring-red-small@0|swan-blue-big@2``."""
        return "|".join(f"{KINDS[k]}-{COLOURS[c]}-{SIZES[s]}@{x}"
                        for k, c, s, x in zip(self.kinds, self.colours, self.sizes, self.columns))

    def mirrored(self) -> "Scene":
        """The same objects with their places reversed: the left one goes right."""
        r = slice(None, None, -1)
        return Scene(self.kinds[r], self.colours[r], self.sizes[r], self.columns,
                     self.tops[r], self.glyphs[r])

    def rekinded(self, i: int, kind: int, glyph: int) -> "Scene":
        """The same scene with object ``i`` of another kind (drawn by ``glyph``)."""
        kinds, glyphs = list(self.kinds), list(self.glyphs)
        kinds[i], glyphs[i] = kind, glyph
        return Scene(kinds, list(self.colours), list(self.sizes), list(self.columns), list(self.tops), glyphs)


class _Glyphs:
    """One split's handwritten digits, pre-resized to each object size, indexed by kind."""

    def __init__(self, split: str):
        train_images, train_labels, test_images, test_labels = digits._load()
        images, labels = (train_images, train_labels) if split == "train" else (test_images, test_labels)
        # [N, 8, 8] -> [N, s, s] per size; antialiased so small objects keep their strokes.
        self.by_size = [F.interpolate(images[:, None], size=(s, s), mode="bilinear", antialias=True,
                                      align_corners=False)[:, 0].clamp(0, 1) for s in SIZE_PX]
        self.pools = [torch.nonzero(labels == k)[:, 0] for k in range(len(KINDS))]


def _allowed_colours(held: bool) -> torch.Tensor:
    """[kinds, n] table of the colours each kind may take in training (held=False) or evaluation."""
    return torch.tensor([[c for c in range(len(COLOURS)) if held_out(k, c) == held] for k in range(len(KINDS))])


def sample_scenes(n: int, gen: torch.Generator, glyphs: _Glyphs, held: bool,
                  num_objects: tuple[int, ...] = (1, 2, 3), distinct_kinds: bool = False) -> list[Scene]:
    """``n`` random scenes; ``held`` draws every object from the held-out attribute pairs."""
    allowed = _allowed_colours(held)
    counts = torch.tensor(num_objects)[torch.randint(len(num_objects), (n,), generator=gen)]
    kinds = torch.randint(len(KINDS), (n, 3), generator=gen)
    if distinct_kinds:
        kinds = torch.stack([torch.randperm(len(KINDS), generator=gen)[:3] for _ in range(n)])
    colours = allowed[kinds, torch.randint(allowed.shape[1], (n, 3), generator=gen)]
    sizes = torch.randint(len(SIZES), (n, 3), generator=gen)
    columns = torch.rand(n, 3, generator=gen).argsort(dim=1)
    vertical = torch.rand(n, 3, generator=gen)
    pick = torch.rand(n, 3, generator=gen)
    scenes = []
    for i in range(n):
        m = int(counts[i])
        cols = sorted(columns[i, :m].tolist())
        ks, ss = kinds[i, :m].tolist(), sizes[i, :m].tolist()
        tops = [ALIGN * int(vertical[i, j] * ((CANVAS - SIZE_PX[s]) // ALIGN + 1)) for j, s in enumerate(ss)]
        pool = [glyphs.pools[k] for k in ks]
        gl = [int(p[int(pick[i, j] * len(p))]) for j, p in enumerate(pool)]
        scenes.append(Scene(ks, colours[i, :m].tolist(), ss, cols, tops, gl))
    return scenes


def render(scenes: list[Scene], glyphs: _Glyphs, image_size: int) -> torch.Tensor:
    """Scenes -> normalised model input [B, 3, image_size, image_size]."""
    canvas = torch.zeros(len(scenes), 3, CANVAS, CANVAS)
    for b, s in enumerate(scenes):
        for k, c, z, x, y, g in zip(s.kinds, s.colours, s.sizes, s.columns, s.tops, s.glyphs):
            px = SIZE_PX[z]
            left = LEFT_PX[px][x]
            ink = RGB[c][:, None, None] * glyphs.by_size[z][g]  # [3, px, px]
            region = canvas[b, :, y:y + px, left:left + px]
            torch.maximum(region, ink, out=region)
    if image_size != CANVAS:
        canvas = F.interpolate(canvas, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return (canvas - digits._MEAN) / digits._STD


class WorldLoader:
    """Endless, seeded, exactly resumable batches of rendered scenes and training captions.

    Batch ``i`` is a pure function of ``(seed, i)``: the state is the batch count. Scenes are
    drawn for the whole global batch, then sliced, so any number of ranks sees the batch one
    process would.
    """

    def __init__(
        self,
        image_size: int,
        batch_size: int,
        tokenize: Callable[[list[str]], torch.Tensor],
        seed: int = 0,
        state: dict | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.glyphs = _Glyphs("train")
        self.image_size, self.batch_size, self.tokenize, self.seed = image_size, batch_size, tokenize, seed
        self.rank, self.world_size = rank, world_size
        self.index = state["index"] if state else 0

    def state_dict(self) -> dict:
        return {"index": self.index}

    def stats(self) -> dict[str, int]:
        return {}

    def global_batch(self, index: int) -> tuple[list[Scene], list[str]]:
        """Batch ``index``'s scenes and captions, every rank's share."""
        n = self.batch_size * self.world_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        scenes = sample_scenes(n, gen, self.glyphs, held=False)
        partner, draws = torch.rand(n, generator=gen) < PARTNER_PROB, torch.rand(n, 3, generator=gen).tolist()
        for i in range(1, n, 2):
            # Pair (i-1, i): the second becomes a hard negative of the first.
            if partner[i]:
                scenes[i] = self._partner(scenes[i - 1], draws[i])
        choice, verb = torch.rand(n, generator=gen).tolist(), torch.randint(len(VERBS), (n,), generator=gen)
        captions = []
        for s, c, v in zip(scenes, choice, verb.tolist()):
            templates = TRAIN_TEMPLATES[len(s.kinds)]
            captions.append(s.caption(templates[int(c * len(templates))], VERBS[v]))
        return scenes, captions

    def _partner(self, scene: Scene, draw: list[float]) -> Scene:
        """``scene`` mirrored (when it has two or three objects, half the time), else with one
        object's kind changed to another allowed with its colour."""
        if len(scene.kinds) > 1 and draw[0] < 0.5:
            return scene.mirrored()
        i = int(draw[1] * len(scene.kinds))
        others = [k for k in range(len(KINDS)) if k != scene.kinds[i] and not held_out(k, scene.colours[i])]
        kind = others[int(draw[2] * len(others))]
        pool = self.glyphs.pools[kind]
        return scene.rekinded(i, kind, int(pool[int(draw[2] * len(pool))]))

    def __iter__(self) -> Iterator[dict]:
        while True:
            scenes, captions = self.global_batch(self.index)
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            scenes, captions = scenes[mine], captions[mine]
            images = render(scenes, self.glyphs, self.image_size)
            self.index += 1
            yield {"images": images, "text": self.tokenize(captions), "keys": [s.key() for s in scenes]}


# ----------------------------------------------------------------------------- evaluation sets

EVAL_SEED = 12345
EVAL_SINGLE, EVAL_PAIRS, EVAL_RETRIEVAL = 600, 400, 500


@dataclass
class WorldEval:
    """The held-out evaluation: single-object scenes with their labels per attribute, object
    pairs with their true and swapped relation captions, and scenes with retrieval captions."""

    single: torch.Tensor  # [N1, 3, H, W]
    labels: dict[str, torch.Tensor]  # task -> [N1]
    pairs: torch.Tensor  # [N2, 3, H, W]
    relation_texts: list[tuple[list[str], list[str]]]  # per pair: (true prompts, swapped prompts)
    retrieval: torch.Tensor  # [N3, 3, H, W]
    retrieval_captions: list[str]


def relation_prompts(scene: Scene) -> tuple[list[str], list[str]]:
    """The held-out relation prompts for a two-object scene, and the same with the objects swapped."""
    true = [scene.caption(t, article="the") for t in RELATION_TEMPLATES]
    false = [scene.mirrored().caption(t, article="the") for t in RELATION_TEMPLATES]
    return true, false


def eval_world(image_size: int) -> WorldEval:
    """The fixed evaluation sets (held-out glyphs, attribute pairs and wording) at ``image_size``."""
    glyphs = _Glyphs("test")
    gen = torch.Generator().manual_seed(EVAL_SEED)
    single = sample_scenes(EVAL_SINGLE, gen, glyphs, held=True, num_objects=(1,))
    pairs = sample_scenes(EVAL_PAIRS, gen, glyphs, held=True, num_objects=(2,), distinct_kinds=True)
    scenes = sample_scenes(EVAL_RETRIEVAL, gen, glyphs, held=True)
    labels = {
        "object": torch.tensor([s.kinds[0] for s in single]),
        "colour": torch.tensor([s.colours[0] for s in single]),
        "size": torch.tensor([s.sizes[0] for s in single]),
    }
    return WorldEval(
        single=render(single, glyphs, image_size),
        labels=labels,
        pairs=render(pairs, glyphs, image_size),
        relation_texts=[relation_prompts(s) for s in pairs],
        retrieval=render(scenes, glyphs, image_size),
        retrieval_captions=[s.caption(RETRIEVAL_TEMPLATES[len(s.kinds)], article="the") for s in scenes],
    )

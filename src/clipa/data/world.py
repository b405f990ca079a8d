"""A built-in compositional world: scenes of one to three coloured objects, captioned.

The microscope for CLIPA's and BASIC's claims on two CPU cores. Each object has an identity
(one of ten kinds, drawn as a real handwritten digit from scikit-learn's set), a colour, a
size and a place (one cell of a 2x2 grid on a 32 px canvas). Kinds are named by nouns
("ring" for the digit 0, "swan" for 2, ...), colours and sizes by adjectives, so a
part-of-speech tagger sees what real captions have: content in nouns and adjectives, filler
verbs ("sits", "floats") and articles, relations ("left of", "above") in word order. Captions
come from templates that put the content early or late, so truncation, random, block and
syntax text masking keep different information; a small object is one 8 px patch of the
studies' micro CLIPs (a big one four), so image masking can hide it.

Held out from training, for the zero-shot evaluation:
- the glyphs: 20% of the handwritten digits (the same split as ``data.digits``);
- attribute combinations: kind k never appears in colour ``k % 6`` (10 of the 60 pairs,
  one per kind, each colour held out for one or two kinds); every evaluation object has such
  a pair;
- the wording: evaluation prompts and retrieval captions use templates never used in training.

Half the training scenes come with a hard negative in the same batch: the same scene with the
objects' places swapped, or with one object's kind changed. Colour, size and count tell most
scenes of a batch apart; without such pairs a small CLIP learns them and matches captions as
bags of words, never needing the shape of a digit or the order of "A left of B".

Which object on held-out pairs is the hardest task and the one the papers' claims are about
(zero-shot ImageNet is identity). What makes a micro CLIP learn it within a study's budget
(``benchmarks/study.py``: width 64, two layers and four heads per tower, 128 per batch):
- 8 px patches on the 32 px canvas, so a small glyph is one patch and a big one four. With
  4 px patches a glyph's shape is spread over 4-16 patches that two layers must assemble:
  object accuracy stayed at 10-14% after 256 steps and 23-32% after 1,024 with every
  change below;
- colours with a grey floor (``GREY_FLOOR``), so a shape shows in every channel and a kind
  learnt in its training colours is read in its held-out one.
With both, object accuracy on held-out pairs was 23% and 45% after 512 steps (seeds 0, 1),
40%, 48% and 29% after 768 (seeds 0-2), 49% and 44% after 1,024 (seeds 0, 2); relations
70-87% from 768 steps. What did not bring identity (one seed each, 256-512 steps): tinted
colours with 4 px patches (2%: the text side's colour prior, below), ten colours instead of
six, three, the class-mean glyph instead of handwriting (22-28%), one object per scene,
every partner a kind change, 12 px small glyphs, a learning rate of 6e-3, training captions
with the evaluation's words; before them, learning rates 1e-3 to 1e-2, batch 32, wider or
deeper towers, mean pooling, a higher initial logit scale, SigLIP, groups of eight hard
negatives and captions that leave colours unsaid. Asked by the class name alone ("an image
of a ring.") a model scores near or below chance: training never shows a kind in its
held-out colour, so a bare noun's embedding leans away from exactly that colour; the
evaluation asks with the whole phrase for that reason (``clipa.eval.world``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import torch
import torch.nn.functional as F

from . import digits
from .builtin import GREY
from .transforms import normalise

KINDS = ["ring", "pole", "swan", "ear", "chair", "hook", "snail", "axe", "snowman", "balloon"]  # digit 0..9
COLOURS = ["red", "green", "blue", "yellow", "purple", "white"]
HUES = torch.tensor([[1.0, 0.15, 0.1], [0.15, 0.85, 0.15], [0.2, 0.35, 1.0],
                     [1.0, 0.9, 0.1], [0.65, 0.2, 0.9], [1.0, 1.0, 1.0]])
# Every colour keeps a grey floor, so a glyph's shape shows in all three channels alike and a
# patch embedding that learnt a kind in its training colours also reads it in its held-out
# one. Without the floor a red glyph is ink in the red channel only: micro-32's vision tower,
# trained supervised on kind for 128 steps, read held-out colours at 27% (55% on training
# colours); with a floor of 0.3, 43% (65%); 0.6 reads 73% but blurs the colours apart.
GREY_FLOOR = 0.3
RGB = GREY_FLOOR + (1 - GREY_FLOOR) * HUES
SIZES = ["small", "big"]
SIZE_PX = [8, 16]
CANVAS, CELL = 32, 16  # a 2x2 grid of cells, numbered in reading order
PLACES = ["at the top left", "at the top right", "at the bottom left", "at the bottom right"]
VERBS = ["sits", "stands", "rests", "floats"]
# Objects sit at their cell's top left corner: on the 4 and 8 px patch grids, so a glyph covers
# whole patches the same way wherever it is (a tiny ViT learns shapes many times faster then).
PARTNER_PROB = 1.0  # every second scene of a batch is the previous one's hard negative


def held_out(kind: int, colour: int) -> bool:
    """Attribute pairs never seen in training (each kind misses one colour)."""
    return colour == kind % len(COLOURS)


def relation(a: int, b: int) -> str:
    """Where cell ``a`` is from cell ``b``: left or right of it when their columns differ, else above or below."""
    if a % 2 != b % 2:
        return "left of" if a % 2 < b % 2 else "right of"
    return "above" if a < b else "below"


# Training templates: {A}, {B}, {C} are the objects in reading order ("a small red ring"),
# {ab} where A is from B, {ba} the converse, {pA}/{pC} places.
TRAIN_TEMPLATES = {
    1: ["{A} {v} {pA}", "{pA} {v} {A}", "a picture of {A} {pA}", "there is {A} {pA}", "{A}"],
    2: ["{A} {v} {ab} {B}", "{B} {v} {ba} {A}", "{ab} {B} {v} {A}", "there is {A} and {ba} it {B}",
        "a picture of {A} and {B}"],
    3: ["a picture of {A} , {B} and {C}", "{A} {v} {ab} {B} and {C} {v} {pC}",
        "{C} {v} {pC} , {A} {v} {ab} {B}", "{pA} {v} {A} , then {B} and {C}"],
}

# Held out: the evaluation's wording only.
EVAL_TEMPLATES = ["an image of {A}.", "a photo that shows {A}."]  # {A}: one object's phrase
RELATION_TEMPLATES = ["an image where {A} is {ab} {B}.", "a photo in which {B} is {ba} {A}."]
RETRIEVAL_TEMPLATES = {
    1: "an image where {A} is {pA}.",
    2: "an image where {A} is {ab} {B}.",
    3: "an image with {A} , {B} and {C}.",
}


@dataclass
class Scene:
    """Objects in reading order of their cells: kind, colour, size index, cell, offset and glyph each."""

    kinds: list[int]
    colours: list[int]
    sizes: list[int]
    cells: list[int]
    offsets: list[tuple[int, int]]  # (down, right) px inside the cell, multiples of 4
    glyphs: list[int]

    def phrase(self, i: int, article: str = "a") -> str:
        return f"{article} {SIZES[self.sizes[i]]} {COLOURS[self.colours[i]]} {KINDS[self.kinds[i]]}"

    def caption(self, template: str, verb: str = "sits", article: str = "a") -> str:
        n = len(self.kinds)
        names = {k: self.phrase(i, article) for i, k in enumerate("ABC"[:n])}
        words = {"pA": PLACES[self.cells[0]], "pC": PLACES[self.cells[-1]]}
        if n > 1:
            words.update(ab=relation(self.cells[0], self.cells[1]), ba=relation(self.cells[1], self.cells[0]))
        return template.format(v=verb, **names, **words)

    def key(self) -> str:
        """``kind-colour-size@cell`` per object, e.g. ``ring-red-small@0|swan-blue-big@3``."""
        return "|".join(f"{KINDS[k]}-{COLOURS[c]}-{SIZES[s]}@{x}"
                        for k, c, s, x in zip(self.kinds, self.colours, self.sizes, self.cells))

    def mirrored(self) -> "Scene":
        """The same objects with their places reversed: the first one goes where the last was."""
        r = slice(None, None, -1)
        return Scene(self.kinds[r], self.colours[r], self.sizes[r], self.cells, self.offsets[r], self.glyphs[r])

    def rekinded(self, i: int, kind: int, glyph: int) -> "Scene":
        """The same scene with object ``i`` of another kind (drawn by ``glyph``)."""
        kinds, glyphs = list(self.kinds), list(self.glyphs)
        kinds[i], glyphs[i] = kind, glyph
        return Scene(kinds, list(self.colours), list(self.sizes), list(self.cells), list(self.offsets), glyphs)


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
    cells = torch.rand(n, 4, generator=gen).argsort(dim=1)
    pick = torch.rand(n, 3, generator=gen)
    scenes = []
    for i in range(n):
        m = int(counts[i])
        order = cells[i, :m].sort()
        idx = order.indices.tolist()  # objects in reading order of their cells
        ks, ss = kinds[i, idx].tolist(), sizes[i, idx].tolist()
        offsets = [(0, 0)] * m
        gl = [int(glyphs.pools[k][int(pick[i, j] * len(glyphs.pools[k]))]) for j, k in zip(idx, ks)]
        scenes.append(Scene(ks, colours[i, idx].tolist(), ss, order.values.tolist(), offsets, gl))
    return scenes


def draw(scenes: list[Scene], glyphs: _Glyphs, image_size: int) -> torch.Tensor:
    """Scenes -> uint8 pixels [B, 3, image_size, image_size], as every loader hands them over."""
    canvas = torch.zeros(len(scenes), 3, CANVAS, CANVAS)
    for b, s in enumerate(scenes):
        for c, z, cell, (dy, dx), g in zip(s.colours, s.sizes, s.cells, s.offsets, s.glyphs):
            px = SIZE_PX[z]
            top, left = CELL * (cell // 2) + dy, CELL * (cell % 2) + dx
            ink = RGB[c][:, None, None] * glyphs.by_size[z][g]  # [3, px, px]
            region = canvas[b, :, top:top + px, left:left + px]
            torch.maximum(region, ink, out=region)
    if image_size != CANVAS:
        canvas = F.interpolate(canvas, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return canvas.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def render(scenes: list[Scene], glyphs: _Glyphs, image_size: int) -> torch.Tensor:
    """Scenes -> normalised model input [B, 3, image_size, image_size]: :func:`draw`, then the one
    normalisation with the digits' statistics (a model trained on the world keeps them, ``builtin.GREY``)."""
    return normalise(draw(scenes, glyphs, image_size), GREY.mean, GREY.std)


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
        pin_memory: bool = False,
    ):
        self.glyphs = _Glyphs("train")
        self.image_size, self.batch_size, self.tokenize, self.seed = image_size, batch_size, tokenize, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.index = state["index"] if state else 0

    def state_dict(self) -> dict:
        return {"index": self.index}

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing to end: scenes are drawn in this process."""

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

    def __iter__(self) -> Generator[dict, None, None]:
        while True:
            scenes, captions = self.global_batch(self.index)
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            scenes, captions = scenes[mine], captions[mine]
            images = draw(scenes, self.glyphs, self.image_size)  # uint8
            self.index += 1
            yield {"images": images.pin_memory() if self.pin_memory else images, "text": self.tokenize(captions),
                   "keys": [s.key() for s in scenes]}


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


def single_labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Task -> [N] labels (kind, colour and size index) of single-object scenes."""
    return {"object": torch.tensor([s.kinds[0] for s in scenes]),
            "colour": torch.tensor([s.colours[0] for s in scenes]),
            "size": torch.tensor([s.sizes[0] for s in scenes])}


def eval_world(image_size: int) -> WorldEval:
    """The fixed evaluation sets (held-out glyphs, attribute pairs and wording) at ``image_size``."""
    glyphs = _Glyphs("test")
    gen = torch.Generator().manual_seed(EVAL_SEED)
    single = sample_scenes(EVAL_SINGLE, gen, glyphs, held=True, num_objects=(1,))
    pairs = sample_scenes(EVAL_PAIRS, gen, glyphs, held=True, num_objects=(2,), distinct_kinds=True)
    scenes = sample_scenes(EVAL_RETRIEVAL, gen, glyphs, held=True)
    return WorldEval(
        single=render(single, glyphs, image_size),
        labels=single_labels(single),
        pairs=render(pairs, glyphs, image_size),
        relation_texts=[relation_prompts(s) for s in pairs],
        retrieval=render(scenes, glyphs, image_size),
        retrieval_captions=[s.caption(RETRIEVAL_TEMPLATES[len(s.kinds)], article="the") for s in scenes],
    )

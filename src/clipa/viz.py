"""``clipa show-masks``: draw what the model sees under each token reduction rule.

One row of panels shows the image as the model's patch grid: the original, ``resize`` (the
smaller image, each pixel block one patch), then ``random``, ``grid`` (fixed and random
position) and ``block`` with dropped patches darkened. Below, for a caption, one line per text
rule with its kept words in black, words only some of whose tokens survive in orange and
dropped words in grey; ``syntax`` shows each word's part-of-speech tag. The selections come
from the same functions training uses (``keep_indices``, ``token_positions``, ``syntax_keep``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .config import ImageReductionConfig
from .reduction.image import keep_indices, resize_image_size
from .reduction.tagger import get_tagger
from .reduction.text import STRATEGIES, syntax_keep, token_positions

KEPT, PART, DROPPED = (0, 0, 0), (200, 110, 0), (170, 170, 170)
PAD = 12
LINE_H = 22
MIN_PANEL = 160  # px: smaller models' inputs are drawn whole-number times larger


def load_square(path: str | Path, size: int) -> Image.Image:
    """The centre square of an image at ``size`` px (short side resized first, as in eval)."""
    img = Image.open(path).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def _draw_grid(img: Image.Image, cells: int) -> Image.Image:
    draw = ImageDraw.Draw(img)
    step = img.width / cells
    for i in range(1, cells):
        draw.line([(round(i * step), 0), (round(i * step), img.height)], fill=(255, 255, 255), width=1)
        draw.line([(0, round(i * step)), (img.width, round(i * step))], fill=(255, 255, 255), width=1)
    return img


def masked(img: Image.Image, patch: int, kept: torch.Tensor | None) -> Image.Image:
    """The image with patches outside ``kept`` (row-major indices) darkened."""
    g = img.width // patch
    arr = np.asarray(img, dtype=np.float32)
    if kept is not None:
        keep = np.zeros(g * g, dtype=bool)
        keep[kept.numpy()] = True
        dark = np.kron(~keep.reshape(g, g), np.ones((patch, patch), dtype=bool))
        arr[dark] = arr[dark] * 0.15 + 25
    return _draw_grid(Image.fromarray(arr.astype(np.uint8)), g)


def image_panels(img: Image.Image, patch: int, ratio: float, generator: torch.Generator,
                 zoom: int = 1) -> list[tuple[str, Image.Image]]:
    """(title, picture) for the original and each image rule at ``ratio`` of patches removed.

    ``img`` is the model's input drawn ``zoom`` times larger (so small models stay legible);
    ``patch`` is the model's patch size in its own pixels."""
    size, g = img.width // zoom, img.width // zoom // patch
    n = g * g
    panels = [(f"full: {n} patches", masked(img, patch * zoom, None))]
    small = resize_image_size(ImageReductionConfig("resize", ratio), size, patch)
    coarse = img.resize((small, small), Image.BICUBIC).resize((img.width, img.width), Image.NEAREST)
    panels.append((f"resize {small}px: {(small // patch) ** 2}", _draw_grid(coarse, small // patch)))
    rules = [("random", "random", "fixed"), ("grid", "grid", "fixed"),
             ("grid, random pos.", "grid", "random"), ("block", "block", "fixed")]
    for title, strategy, position in rules:
        cfg = ImageReductionConfig(strategy, ratio if strategy != "grid" else 0.0,
                                   grid_position=position)
        idx = keep_indices(cfg, 1, (g, g), torch.device("cpu"), generator)
        kept = idx[0] if idx is not None else None
        panels.append((f"{title}: {n if kept is None else len(kept)}", masked(img, patch * zoom, kept)))
    return panels


def word_colours(counts: list[int], kept_tokens: list[int]) -> list[tuple]:
    """Colour per word from its token count and the kept token positions of the whole text."""
    owner = np.repeat(np.arange(len(counts)), counts)
    got = np.bincount(owner[kept_tokens], minlength=len(counts))
    return [KEPT if k == c else PART if k else DROPPED for k, c in zip(got, counts)]


def text_lines(caption: str, tokenizer, length: int, tagger: str,
               generator: torch.Generator) -> list[tuple[str, list[tuple[str, tuple]]]]:
    """(rule, [(word, colour)]) per text rule: whitespace words for the token rules, tagged
    words for ``syntax`` (whose kept words are then tokenized and truncated, as in training)."""
    keep = length - 2
    words = caption.split()
    counts = [len(ids) for ids in tokenizer.encode(words)]
    lines = []
    for strategy in STRATEGIES:
        if strategy == "syntax":
            pairs = get_tagger(tagger)(caption)
            chosen = syntax_keep([t for _, t in pairs], keep)
            sizes = [len(ids) for ids in tokenizer.encode([pairs[i][0] for i in chosen])]
            survive = word_colours(sizes, list(range(min(keep, sum(sizes)))))
            colour = dict(zip(chosen, survive))
            lines.append((strategy, [(f"{w}/{t}", colour.get(i, DROPPED))
                                     for i, (w, t) in enumerate(pairs)]))
        else:
            kept = token_positions(sum(counts), keep, strategy, generator)
            lines.append((strategy, list(zip(words, word_colours(counts, kept)))))
    return lines


def show_masks(
    image_path: str | Path,
    out_path: str | Path,
    ratio: float = 0.75,
    caption: str | None = None,
    text_length: int = 8,
    model: str = "ViT-B-16",
    tagger: str = "builtin",
    seed: int = 0,
) -> Path:
    """Save a picture of the kept patches per image rule (``ratio`` of patches removed) and,
    given a ``caption``, the kept words per text rule at ``text_length`` tokens."""
    from .models import get_model_config
    from .tokenizer import text_tokenizer

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (fraction of patches removed) must be in [0, 1), got {ratio}")
    cfg = get_model_config(model)
    generator = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    zoom = -(-MIN_PANEL // size)
    # the model's pixels, each drawn as a zoom x zoom square: what it sees, only bigger
    img = load_square(image_path, size).resize((size * zoom, size * zoom), Image.NEAREST)
    panels = image_panels(img, cfg.vision.patch_size, ratio, generator, zoom)
    tokenizer = text_tokenizer(cfg.text, cfg.text.context_length)
    lines = text_lines(caption, tokenizer, text_length, tagger, generator) if caption else []

    font = ImageFont.load_default(size=14)
    # Every panel at least MIN_PANEL px wide (whole-number zoom keeps patches square) and every
    # column as wide as its title, so tiny models are legible and titles never overlap.
    column = max(size * zoom, *(font.getlength(t) for t, _ in panels))
    column = int(column) + 1
    width = PAD + len(panels) * (column + PAD)
    text = _layout_text(lines, text_length, font, width) if lines else []
    height = PAD + LINE_H + size * zoom + PAD + (text[-1][1] + LINE_H + PAD if text else 0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, panel) in enumerate(panels):
        x = PAD + i * (column + PAD)
        draw.text((x, PAD), title, fill=KEPT, font=font)
        canvas.paste(panel, (x, PAD + LINE_H))
    top = PAD + LINE_H + size * zoom + PAD
    for x, y, word, colour in text:
        draw.text((x, top + y), word, fill=colour, font=font)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _layout_text(lines: list[tuple[str, list[tuple[str, tuple]]]], text_length: int, font,
                 width: int) -> list[tuple[float, int, str, tuple]]:
    """(x, y, word, colour) for the legend and each rule's words, wrapped at ``width`` (a long
    caption continues on the next line, indented under the words) instead of being cut off."""
    legend = (f"caption at {text_length} tokens ({text_length - 2} between start and end): black kept, "
              "orange partly kept, grey dropped").split()
    placed = [(x, row * LINE_H, word, KEPT) for x, row, word in place_words(legend, font, PAD, width - PAD)]
    y = (placed[-1][1] + LINE_H) if placed else 0
    indent = PAD + max(font.getlength(f"{name}:") for name, _ in lines) + font.size // 2
    for name, words in lines:
        placed.append((PAD, y, f"{name}:", KEPT))
        runs = place_words([w for w, _ in words], font, indent, width - PAD)
        placed += [(x, y + row * LINE_H, word, colour) for (x, row, word), (_, colour) in zip(runs, words)]
        y += (runs[-1][1] + 1) * LINE_H if runs else LINE_H
    return placed


def place_words(words: list[str], font: ImageFont.FreeTypeFont, left: float,
                right: float) -> list[tuple[float, int, str]]:
    """(x, line number, word) for words set left to right between ``left`` and ``right`` px,
    wrapping to a new line rather than running past ``right``. Words are drawn one by one a
    visible gap apart: the default font's own space is 2 px at small sizes, which reads as none."""
    gap = max(font.getlength(" "), font.size / 3)
    out, x, row = [], left, 0
    for word in words:
        w = font.getlength(word)
        if x > left and x + w > right:
            x, row = left, row + 1
        out.append((x, row, word))
        x += w + gap
    return out

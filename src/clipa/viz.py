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


def image_panels(img: Image.Image, patch: int, ratio: float,
                 generator: torch.Generator) -> list[tuple[str, Image.Image]]:
    """(title, picture) for the original and each image rule at ``ratio`` of patches removed."""
    size, g = img.width, img.width // patch
    n = g * g
    panels = [(f"full: {n} patches", masked(img, patch, None))]
    small = resize_image_size(ImageReductionConfig("resize", ratio), size, patch)
    coarse = img.resize((small, small), Image.BICUBIC).resize((size, size), Image.NEAREST)
    panels.append((f"resize {small}px: {(small // patch) ** 2}", _draw_grid(coarse, small // patch)))
    rules = [("random", "random", "fixed"), ("grid", "grid", "fixed"),
             ("grid, random pos.", "grid", "random"), ("block", "block", "fixed")]
    for title, strategy, position in rules:
        cfg = ImageReductionConfig(strategy, ratio if strategy != "grid" else 0.0,
                                   grid_position=position)
        idx = keep_indices(cfg, 1, (g, g), torch.device("cpu"), generator)
        kept = idx[0] if idx is not None else None
        panels.append((f"{title}: {n if kept is None else len(kept)}", masked(img, patch, kept)))
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
    from . import get_model_config, get_tokenizer

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio (fraction of patches removed) must be in [0, 1), got {ratio}")
    cfg = get_model_config(model)
    generator = torch.Generator().manual_seed(seed)
    img = load_square(image_path, cfg.vision.image_size)
    panels = image_panels(img, cfg.vision.patch_size, ratio, generator)
    lines = text_lines(caption, get_tokenizer(model), text_length, tagger, generator) if caption else []

    font = ImageFont.load_default(size=14)
    size = img.width
    title_h, line_h = 22, 22
    width = PAD + len(panels) * (size + PAD)
    height = PAD + title_h + size + PAD + (line_h * (len(lines) + 2) + PAD if lines else 0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, panel) in enumerate(panels):
        x = PAD + i * (size + PAD)
        draw.text((x, PAD), title, fill=KEPT, font=font)
        canvas.paste(panel, (x, PAD + title_h))
    y = PAD + title_h + size + PAD
    if lines:
        draw.text((PAD, y), f"caption at {text_length} tokens ({text_length - 2} between start "
                  f"and end): black kept, orange partly kept, grey dropped", fill=KEPT, font=font)
        y += line_h
        for name, words in lines:
            x = PAD
            draw.text((x, y), f"{name}:", fill=KEPT, font=font)
            x += 80
            for word, colour in words:
                draw.text((x, y), word, fill=colour, font=font)
                x += draw.textlength(word + " ", font=font)
            y += line_h
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.crop((0, 0, width, y + PAD if lines else height)).save(out)
    return out

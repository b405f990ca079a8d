"""One raw sample (a dict of file payloads) -> key, caption and RGB image, or the reason it is bad.

Every way a sample can be unusable has a name in :data:`REASONS`; the loader counts
skipped samples by these names so that bad data never passes silently.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Callable

from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

REASONS = {
    "missing_image": "no .jpg/.jpeg/.png/.webp member (or a table row whose image file is absent)",
    "empty_image": "zero-byte image file",
    "corrupt_image": "truncated or undecodable image",
    "decompression_bomb": "more pixels than data.max_image_pixels",
    "missing_caption": "no .txt caption and no .json 'captions' list",
    "empty_caption": "caption empty or only whitespace",
    "bad_text": "caption or .json not valid UTF-8 (or .json not valid JSON)",
    "corrupt_shard": "truncated or corrupt tar; the rest of that shard is skipped",
    "unreadable_shard": "shard could not be opened or read (missing file, failing pipe: command)",
}


def describe(counts: dict[str, int]) -> str:
    """``{"bad_text": 2, ...}`` -> ``"bad_text=2, ..."`` (sorted), or ``"nothing"``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "nothing"


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeOptions:
    caption_choice: str = "random"  # "random" | "first" among a .json's captions
    max_image_pixels: int = 89_478_485  # PIL's default; PIL itself refuses twice its Image.MAX_IMAGE_PIXELS
    draft_size: int | None = None  # decode JPEGs at a reduced scale whose short side stays >= this


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadSample("bad_text", str(e)) from None


def captions_of(raw: dict) -> list[str]:
    """All captions of a sample: the .json 'captions' list when there is one, else the .txt."""
    if isinstance(raw.get("captions"), list):  # table sources (CSV, folders) give strings
        found = raw["captions"]
    else:
        found = []
        if "json" in raw:
            try:
                meta = json.loads(_text(raw["json"]))
            except json.JSONDecodeError as e:
                raise BadSample("bad_text", f".json: {e}") from None
            listed = meta.get("captions") if isinstance(meta, dict) else None
            if isinstance(listed, list):
                found = [c for c in listed if isinstance(c, str)]
        if not found and "txt" in raw:
            found = [_text(raw["txt"])]
    if not found:
        raise BadSample("missing_caption")
    for caption in found:
        try:
            caption.encode("utf-8")  # lone surrogates from a non-UTF-8 table
        except UnicodeEncodeError as e:
            raise BadSample("bad_text", str(e)) from None
    found = [c.strip() for c in found if c.strip()]
    if not found:
        raise BadSample("empty_caption")
    return found


def pick_caption(captions: list[str], choice: str, seed: int) -> str:
    return captions[0] if choice == "first" else captions[(seed >> 11) % len(captions)]


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None,
                 before_load: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Bytes -> loaded RGB image; the size guard runs on the header, before any pixel is decoded.

    ``before_load`` sees the opened, not yet decoded image (size and format known) and may
    call ``draft`` on it instead of the fixed ``draft_size`` (see :mod:`clipa.data.decode`)."""
    if not data:
        raise BadSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > max_pixels:
                raise BadSample("decompression_bomb", f"{w}x{h} pixels")
            if before_load is not None:
                before_load(image)
            elif draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")  # convert would copy
    except BadSample:
        raise
    except Image.DecompressionBombError as e:
        raise BadSample("decompression_bomb", str(e)) from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        raise BadSample("corrupt_image", f"{type(e).__name__}: {e}") from None


def decode_sample(raw: dict, options: DecodeOptions) -> tuple[list[str], Image.Image]:
    """(captions, RGB image) of a raw sample, or BadSample; captions are checked first (cheap)."""
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise BadSample("missing_image")
    captions = captions_of(raw)
    return captions, decode_image(raw[ext], options.max_image_pixels, options.draft_size)

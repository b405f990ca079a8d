"""One raw sample (a dict of file payloads) -> image and caption(s) or class label, or the reason it is bad.

Every way a sample can be unusable has a name in :data:`REASONS`; the loader counts
skipped samples by these names so that bad data never passes silently.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

log = logging.getLogger("clipa.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LOG_FIRST = 5  # skipped samples logged in full per reason (and loader worker); the rest are only counted

REASONS = {
    "missing_image": "no .jpg/.jpeg/.png/.webp member (or a table row whose image file is absent)",
    "empty_image": "zero-byte image file",
    "corrupt_image": "truncated or undecodable image",
    "decompression_bomb": "more pixels than data.max_image_pixels",
    "missing_caption": "no .txt caption and no .json 'captions' list",
    "missing_label": "no .cls class index (classification evaluation sets)",
    "empty_caption": "caption empty or only whitespace",
    "bad_text": "caption, .json or .cls not valid UTF-8 (or .json not valid JSON, .cls not an integer)",
    "corrupt_shard": "a sample lost to a corrupt tar header (reading resumes at the next valid header), "
                     "or a truncated tar (the rest of that shard)",
    "unreadable_shard": "shard could not be opened or read (missing file, failing pipe: command)",
}


def describe(counts: dict[str, int]) -> str:
    """``{"bad_text": 2, ...}`` -> ``"bad_text=2, ..."`` (sorted), or ``"nothing"``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "nothing"


def count_skip(counts: dict[str, int], reason: str, where: str) -> None:
    """Count a skipped sample under its reason; the first few of each reason are logged in full."""
    n = counts[reason] = counts.get(reason, 0) + 1
    if n <= LOG_FIRST:
        more = " (further ones counted, not logged)" if n == LOG_FIRST else ""
        log.warning("skipped %s: %s%s", reason, where, more)


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeOptions:
    caption_choice: str = "random"  # "random" | "first" among a .json's captions
    max_image_pixels: int = 89_478_485  # PIL's default; PIL itself refuses twice its Image.MAX_IMAGE_PIXELS
    draft_size: int | None = None  # decode JPEGs at a reduced scale whose short side stays >= this
    mode: str | None = "RGB"  # None: the image as stored (OpenCLIP's evaluation converts after cropping)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadSample("bad_text", str(e)) from None


def captions_of(raw: dict, lines: bool = False) -> list[str]:
    """All captions of a sample: the .json 'captions' list when there is one, else the .txt,
    as one caption or, with ``lines``, one per line (CLIP_benchmark's retrieval layout)."""
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
            text = _text(raw["txt"])
            found = text.splitlines() if lines else [text]
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


def label_of(raw: dict) -> int:
    """The class index in a sample's ``.cls`` (CLIP_benchmark's classification layout)."""
    if "cls" not in raw:
        raise BadSample("missing_label")
    try:
        return int(_text(raw["cls"]).strip())
    except ValueError as e:
        raise BadSample("bad_text", f".cls: {e}") from None


def pick_caption(captions: list[str], choice: str, seed: int) -> str:
    return captions[0] if choice == "first" else captions[(seed >> 11) % len(captions)]


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> an opened image whose header (size, format) is read and checked against
    ``max_pixels``; no pixel is decoded yet."""
    if not data:
        raise BadSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample("decompression_bomb", str(e)) from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        raise BadSample("corrupt_image", f"{type(e).__name__}: {e}") from None
    w, h = image.size
    if w * h > max_pixels:
        raise BadSample("decompression_bomb", f"{w}x{h} pixels")
    return image


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None, mode: str | None = "RGB",
                 before_load: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Bytes -> loaded image in ``mode`` (None: as stored); the size guard runs on the header,
    before any pixel is decoded.

    ``before_load`` sees the opened, not yet decoded image (size and format known) and may
    call ``draft`` on it instead of the fixed ``draft_size`` (see :mod:`clipa.data.decode`)."""
    image = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if before_load is not None:
                before_load(image)
            elif draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image if mode in (None, image.mode) else image.convert(mode)  # convert would copy
    except Image.DecompressionBombError as e:
        raise BadSample("decompression_bomb", str(e)) from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ...
        raise BadSample("corrupt_image", f"{type(e).__name__}: {e}") from None


def decode_sample(raw: dict, options: DecodeOptions, target: Callable[[dict], Any] = captions_of,
                  image: Callable[[bytes], Any] | None = None) -> tuple[Any, Any]:
    """(target, image) of a raw sample, or BadSample; the target (by default the captions;
    :func:`label_of` for classification) is checked first, as it is cheap. ``image`` turns the
    image bytes into what the caller wants (the training loader's crop-while-decoding, see
    :func:`clipa.data.decode.image_decoder`); by default a PIL image as ``options`` say."""
    if "__damaged__" in raw:
        raise BadSample("corrupt_shard", raw["__damaged__"])
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise BadSample("missing_image")
    found = target(raw)
    if image is not None:
        return found, image(raw[ext])
    return found, decode_image(raw[ext], options.max_image_pixels, options.draft_size, options.mode)

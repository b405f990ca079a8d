"""Syntax masking without a download: how often the built-in tagger keeps NLTK's words.

Reference: OpenCLIP 3.3.0's ``syntax_mask_tokenize`` (NLTK ``word_tokenize`` + ``pos_tag``) on
every Flickr8k caption (8,000 images x 5) at context length 8, i.e. 6 kept words. For each
tagger it prints the share of captions whose kept-word list equals the reference's, and for
``nltk`` also the share of token rows identical to OpenCLIP's. Last line: the built-in tagger's
percentage (goal >= 85; pattern's lexicon alone gives about 83.8).

Needs ../shared/data (Flickr8k shards and NLTK data), open_clip_torch and nltk:
    python benchmarks/syntax_agreement.py [--data ../shared/data] [--length 8] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
from pathlib import Path


def flickr8k_captions(folder: Path) -> list[str]:
    caps = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    caps.extend(json.load(tar.extractfile(m))["captions"])
    return caps


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="first N captions only")
    args = ap.parse_args()
    os.environ["NLTK_DATA"] = str(args.data / "nltk")  # before nltk is imported

    import open_clip.tokenizer as oc

    from clipa import get_tokenizer
    from clipa.config import TextReductionConfig
    from clipa.reduction.text import reduce_text, syntax_texts

    caps = flickr8k_captions(args.data / "flickr8k")[: args.limit]
    print(f"{len(caps)} Flickr8k captions, context length {args.length} "
          f"({args.length - 2} kept words)")

    # OpenCLIP's own function; its encode_fn also hands us the kept-word text it tokenizes.
    oc._nltk_init = True  # the data is local: skip its (offline: failing) downloads
    ref_texts: list[str] = []
    t0 = time.perf_counter()
    oc_tok = oc.SimpleTokenizer()

    def encode(text: str) -> list[int]:
        ref_texts.append(text)
        return oc_tok.encode(text)

    ref_rows = oc.syntax_mask_tokenize(caps, args.length, oc_tok.sot_token_id, oc_tok.eot_token_id,
                                       encode)
    print(f"reference (OpenCLIP + NLTK): {len(caps) / (time.perf_counter() - t0):,.0f} captions/s")

    tok = get_tokenizer("ViT-B-32")
    results = {}
    for tagger in ("nltk", "builtin"):
        t0 = time.perf_counter()
        texts = syntax_texts(caps, args.length - 2, tagger)
        speed = len(caps) / (time.perf_counter() - t0)
        same = sum(a == b for a, b in zip(texts, ref_texts)) / len(caps)
        results[tagger] = same
        line = f"tagger {tagger:<8} kept-word lists equal to OpenCLIP+NLTK: {100 * same:6.2f}%"
        if tagger == "nltk":
            rows = reduce_text(caps, tok, args.length, TextReductionConfig("syntax", "nltk"))
            line += f"; token rows identical: {100 * (rows == ref_rows).all(1).float().mean():.2f}%"
        print(f"{line} ({speed:,.0f} captions/s)")
    print(f"builtin tagger agreement: {100 * results['builtin']:.2f}%")


if __name__ == "__main__":
    main()

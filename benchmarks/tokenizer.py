"""Captions per second: clipa's tokenizer vs OpenCLIP 3.3.0's SimpleTokenizer on Flickr8k.

Both run on one thread: OpenCLIP's is pure Python, clipa's calls into Rust ``tokenizers`` only
single-threaded (pre-tokenizer and BPE of words it has not seen yet), and torch is set to one. The machine is shared, so each is timed a few times, in turn, and
the best kept. Last line: the ratio clipa / OpenCLIP.

    python benchmarks/tokenizer.py [--repeats 3] [--context-length 77]
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
from pathlib import Path

DATA = Path(os.environ.get("CLIPA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def flickr8k_captions(root: Path) -> list[str]:
    """Every caption of every ``.json`` member of the Flickr8k shards, in shard order."""
    captions = []
    for shard in sorted((root / "flickr8k").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    captions += json.load(tar.extractfile(member))["captions"]
    return captions


def best_rates(fns: list, texts: list[str], repeats: int) -> list[float]:
    """Captions/s of each function, best of ``repeats`` runs taken in turn (load on a shared machine
    drifts, and interleaving exposes every function to the same drift)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(texts)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(texts) / t for t in best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--context-length", type=int, default=77)
    args = ap.parse_args()

    import open_clip
    import torch

    import clipa

    torch.set_num_threads(1)
    texts = flickr8k_captions(DATA)
    ours = clipa.get_tokenizer("ViT-B-32", args.context_length)
    ref = open_clip.get_tokenizer("ViT-B-32", args.context_length)
    # both memoise per word (OpenCLIP its BPE, clipa its ids): a first pass fills them
    cold_ours, cold_ref = best_rates([ours, ref], texts, 1)
    rate_ours, rate_ref = best_rates([ours, ref], texts, args.repeats)
    assert torch.equal(ours(texts), ref(texts)), "clipa's tokens differ from OpenCLIP's"
    print(f"{len(texts)} Flickr8k captions, context {args.context_length}, 1 thread")
    print(f"first pass (empty word caches): clipa {cold_ours:,.0f}/s, OpenCLIP {cold_ref:,.0f}/s")
    print(f"then best of {args.repeats}:")
    print(f"clipa    : {rate_ours:12,.0f} captions/s")
    print(f"OpenCLIP : {rate_ref:12,.0f} captions/s")
    print(f"ratio clipa/OpenCLIP: {rate_ours / rate_ref:.1f}")


if __name__ == "__main__":
    main()

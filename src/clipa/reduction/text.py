"""Text token reduction (CLIPA section 2): cut captions to a target context length.

Every rule returns the tokenizer's own row format, ``[sot, ids..., eot, pad...]`` as a
LongTensor [B, length], and keeps the surviving tokens in their original order.

- ``truncate``: the first ``length - 2`` ids (the tokenizer itself; eot forced last, as OpenCLIP).
- ``random``: ``length - 2`` ids chosen uniformly per caption.
- ``block``: one contiguous run of ``length - 2`` ids at a uniform start per caption.
- ``syntax``: tag the words, rank nouns, adjectives, verbs, then the rest; keep the top
  ``length - 2`` words in order, re-join them with spaces, tokenize and truncate. This is
  OpenCLIP's ``syntax_mask_tokenize`` step for step, including its ranking by NumPy's default
  (unstable) argsort: which of several tied words survive is whatever that sort gives, and it
  differs between NumPy builds and CPUs (with AVX-512 sorting, 26% of Flickr8k captions at 8
  tokens keep other words than a stable sort would). Matching OpenCLIP beats a tidier rule.

Captions already short enough pass through ``random`` and ``block`` whole.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import TextReductionConfig
from .tagger import get_tagger

STRATEGIES = ("truncate", "random", "block", "syntax")


def _rank(tag: str) -> int:
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def syntax_keep(tags: list[str], keep: int) -> list[int]:
    """Positions of the ``keep`` best-ranked words (nouns, adjectives, verbs, rest), in order."""
    order = np.argsort(np.array([_rank(t) for t in tags], dtype=np.int64))
    return sorted(order[:keep].tolist())


def syntax_texts(texts: list[str], keep: int, tagger: str = "builtin") -> list[str]:
    """Each caption cut to its ``keep`` best-ranked words, joined by single spaces."""
    tag = get_tagger(tagger)
    out = []
    for text in texts:
        pairs = tag(text)
        out.append(" ".join(pairs[i][0] for i in syntax_keep([t for _, t in pairs], keep)))
    return out


def pack(ids: list[list[int]], length: int, sot: int, eot: int, pad: int) -> torch.LongTensor:
    """Rows ``[sot, ids..., eot, pad...]``; every id list must fit in ``length - 2``."""
    out = torch.full((len(ids), length), pad, dtype=torch.long)
    out[:, 0] = sot
    for i, row in enumerate(ids):
        out[i, 1:len(row) + 1] = torch.tensor(row, dtype=torch.long)
        out[i, len(row) + 1] = eot
    return out


def token_positions(n: int, keep: int, strategy: str,
                    generator: torch.Generator | None = None) -> list[int]:
    """Which of a caption's ``n`` ids survive ``truncate``, ``random`` or ``block``, in order."""
    if n <= keep:
        return list(range(n))
    if strategy == "truncate":
        return list(range(keep))
    if strategy == "random":
        return torch.randperm(n, generator=generator)[:keep].sort().values.tolist()
    if strategy == "block":
        start = int(torch.randint(0, n - keep + 1, (1,), generator=generator))
        return list(range(start, start + keep))
    raise ValueError(f"unknown text reduction strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def reduce_text(
    texts: list[str] | str,
    tokenizer,
    length: int,
    cfg: TextReductionConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Token rows of ``length`` for ``texts`` by ``cfg.strategy`` (default: truncation).

    ``tokenizer`` follows clipa's interface (``__call__``, ``encode``, ``sot_token_id``,
    ``eot_token_id``, ``pad_token_id``); ``generator`` (CPU) seeds ``random`` and ``block``.
    """
    if isinstance(texts, str):
        texts = [texts]
    cfg = cfg or TextReductionConfig()
    if length < 3:
        raise ValueError(f"text length must leave room for a token between sot and eot, got {length}")
    keep = length - 2
    if cfg.strategy == "truncate":
        return tokenizer(texts, context_length=length)
    if cfg.strategy == "syntax":
        return tokenizer(syntax_texts(texts, keep, cfg.tagger), context_length=length)
    rows = [[ids[j] for j in token_positions(len(ids), keep, cfg.strategy, generator)]
            for ids in tokenizer.encode(texts)]
    return pack(rows, length, tokenizer.sot_token_id, tokenizer.eot_token_id,
                tokenizer.pad_token_id)

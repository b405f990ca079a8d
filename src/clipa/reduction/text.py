"""Text token reduction (CLIPA; docs/reference.md#text-token-reduction): cut captions to a target context length.

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

:class:`CaptionTokenizer` is the training loader's caption -> tokens step: a plain picklable
object, so DataLoader workers run it under the ``spawn`` start method as under ``fork``.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import torch

from ..config import TextReductionConfig
from .tagger import get_tagger

# Syntax masking's ranks by Penn tag prefix: nouns, adjectives, verbs; every other tag ranks last.
_RANKS = (("NN", 1), ("JJ", 2), ("VB", 3))
_OTHER_RANK = 4


def _rank(tag: str) -> int:
    return next((rank for prefix, rank in _RANKS if tag.startswith(prefix)), _OTHER_RANK)


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


def _first(n: int, keep: int, generator: torch.Generator | None) -> list[int]:
    return list(range(keep))


def _uniform(n: int, keep: int, generator: torch.Generator | None) -> list[int]:
    return torch.randperm(n, generator=generator)[:keep].sort().values.tolist()


def _run(n: int, keep: int, generator: torch.Generator | None) -> list[int]:
    start = int(torch.randint(0, n - keep + 1, (1,), generator=generator))
    return list(range(start, start + keep))


# Which ids of a caption too long for ``keep`` survive, per strategy that picks token positions.
POSITIONS: dict[str, Callable[[int, int, torch.Generator | None], list[int]]] = {
    "truncate": _first, "random": _uniform, "block": _run,
}


def token_positions(n: int, keep: int, strategy: str,
                    generator: torch.Generator | None = None) -> list[int]:
    """Which of a caption's ``n`` ids survive ``truncate``, ``random`` or ``block``, in order."""
    if strategy not in POSITIONS:
        raise ValueError(f"{strategy!r} does not pick token positions; choose from {', '.join(POSITIONS)}")
    return list(range(n)) if n <= keep else POSITIONS[strategy](n, keep, generator)


def _truncated(texts: list[str], tokenizer, length: int, cfg: TextReductionConfig,
               generator: torch.Generator | None) -> torch.LongTensor:
    return tokenizer(texts, context_length=length)


def _by_syntax(texts: list[str], tokenizer, length: int, cfg: TextReductionConfig,
               generator: torch.Generator | None) -> torch.LongTensor:
    return tokenizer(syntax_texts(texts, length - 2, cfg.tagger), context_length=length)


def _by_position(texts: list[str], tokenizer, length: int, cfg: TextReductionConfig,
                 generator: torch.Generator | None) -> torch.LongTensor:
    rows = [[ids[j] for j in token_positions(len(ids), length - 2, cfg.strategy, generator)]
            for ids in tokenizer.encode(texts)]
    return pack(rows, length, tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.pad_token_id)


# ``truncate`` is the tokenizer's own cut (the same rows as keeping the first ids).
REDUCERS = {"truncate": _truncated, "random": _by_position, "block": _by_position, "syntax": _by_syntax}
STRATEGIES = tuple(REDUCERS)


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
    if cfg.strategy not in REDUCERS:
        raise ValueError(f"unknown text reduction strategy {cfg.strategy!r}; choose from {', '.join(STRATEGIES)}")
    return REDUCERS[cfg.strategy](texts, tokenizer, length, cfg, generator)


class CaptionTokenizer:
    """Captions -> token rows of ``length`` by ``cfg``'s rule: the training loaders' tokenize step.

    Random rules are seeded by the batch itself (crc32 of its captions, with ``seed``): the
    same batch gets the same tokens in any loader worker, under any start method, after a
    resume and across epochs' different batches, with no state to carry between calls.
    """

    def __init__(self, tokenizer, length: int, cfg: TextReductionConfig | None = None, seed: int = 0):
        self.tokenizer, self.length, self.seed = tokenizer, length, seed
        self.cfg = cfg or TextReductionConfig()

    def __call__(self, captions: list[str]) -> torch.LongTensor:
        digest = zlib.crc32("\x1f".join(captions).encode("utf-8", "replace"))
        generator = torch.Generator().manual_seed(self.seed * 2**32 + digest)
        return reduce_text(captions, self.tokenizer, self.length, self.cfg, generator)

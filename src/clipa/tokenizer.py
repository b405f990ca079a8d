"""Text tokenizers, output-identical to OpenCLIP 3.3.0's but run by the Rust ``tokenizers`` library.

Two kinds, picked by ``cfg.text.tokenizer``:

- ``"clip"``: OpenAI CLIP's byte-level BPE (49,408 tokens) built from the merges file shipped in
  ``clipa/assets``; rows ``[sot, ids..., eot, 0...]`` like ``open_clip.SimpleTokenizer``.
- ``"bert"``: BERT uncased WordPiece (CLIPA-v2), from ``text.tokenizer_path`` or
  ``$CLIPA_BERT_TOKENIZER`` (a file, a folder or a hub id), else ``bert-base-uncased`` through the
  Hugging Face hub cache; rows ``[CLS, ids..., 0...]`` like OpenCLIP's ``HFTokenizer(strip_sep_token=True)``, whose
  ``[SEP]`` becomes 0.

Cleaning is OpenCLIP's (ftfy, HTML unescape twice, whitespace collapse, and lower case for CLIP),
but ftfy is skipped for plain printable ASCII, where none of its fixes can change anything.
"""

from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from .hubfile import DEFAULT_BERT, HubError, fetch, is_repo_id

BERT_ENV = "CLIPA_BERT_TOKENIZER"
_SOT, _EOT = "<start_of_text>", "<end_of_text>"
# OpenCLIP's pre-tokenization regex (compiled there with IGNORECASE), special strings first.
_CLIP_PATTERN = rf"(?i){_SOT}|{_EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"


def clean_words(text: str, lower: bool = True) -> list[str]:
    """The words of OpenCLIP's cleaned text: ``clean='lower'``, or ``'whitespace'`` if not ``lower``.

    ftfy's fixes only act on non-ASCII characters, control characters (``\\r``, ``\\x1b``, ...) and
    HTML entities, so printable ASCII (plus tabs and newlines, which it keeps) without ``&`` skips
    it: most captions, and ftfy is by far the slowest step. Lower-casing before collapsing the
    whitespace gives the same words (no character lower-cases to or from whitespace).
    """
    plain = text.isascii() and "&" not in text and (
        text.isprintable() or text.replace("\n", " ").replace("\t", " ").isprintable())
    if not plain:
        import ftfy  # late: slow to import, and plain text never needs it
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return (text.lower() if lower else text).split()


def _starts(lengths: Iterable[int], count: int) -> np.ndarray:
    """0 and the running sums of ``count`` lengths."""
    out = np.zeros(count + 1, np.int64)
    np.cumsum(np.fromiter(lengths, np.int64, count), out=out[1:])
    return out


class TextTokenizer:
    """Texts -> ``LongTensor[B, context_length]``: ``sot``, ids, ``eot``, then ``pad``.

    Too long a sequence keeps its first ``context_length - 2`` ids and still ends in ``eot``
    (OpenCLIP truncates to ``context_length`` and forces eot into the last slot: the same thing).
    ``encode`` gives the bare ids (no special tokens, no truncation) for text token reduction.

    Both pipelines (pre-tokenizer, BPE / WordPiece) never look across a space, so a text's ids are
    its words' ids in order. The Rust backend tokenizes each distinct word once and a dict keeps
    the result: calling into ``tokenizers`` costs microseconds per text, far more than the lookups.
    """

    memo_size = 100_000  # words kept before the memo starts afresh (bounds memory per process)

    def __init__(self, backend: Tokenizer, context_length: int, *, sot: int, eot: int, pad: int = 0,
                 lower: bool = True, zeroed: int | None = None):
        self.backend = backend
        self.context_length = context_length
        self.sot_token_id, self.eot_token_id, self.pad_token_id = sot, eot, pad
        self.vocab_size = backend.get_vocab_size()
        self._lower = lower
        self._zeroed = zeroed  # an id OpenCLIP replaces by 0 everywhere (BERT's [SEP])
        self._memo: dict[str, tuple[int, ...]] = {}

    def _tokenize_words(self, words: list[str]) -> list[tuple[int, ...]]:
        return [tuple(e.ids) for e in self.backend.encode_batch(words, add_special_tokens=False)]

    def _flat_ids(self, texts: list[str] | str) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids back to back, and where each text starts (then the total)."""
        words = [clean_words(t, self._lower) for t in ([texts] if isinstance(texts, str) else texts)]
        memo = self._memo
        missing = set(chain.from_iterable(words)).difference(memo)
        if missing:
            if len(memo) + len(missing) > self.memo_size:
                memo = self._memo = {}
            missing = list(missing)
            memo.update(zip(missing, self._tokenize_words(missing)))
        per_word = list(map(memo.__getitem__, chain.from_iterable(words)))
        bounds = _starts(map(len, per_word), len(per_word))[_starts(map(len, words), len(words))]
        return np.fromiter(chain.from_iterable(per_word), np.int64, bounds[-1]), bounds

    def encode(self, texts: list[str] | str) -> list[list[int]]:
        flat, bounds = self._flat_ids(texts)
        flat, bounds = flat.tolist(), bounds.tolist()
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]

    def __call__(self, texts: list[str] | str, context_length: int | None = None) -> torch.LongTensor:
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {length}")
        flat, bounds = self._flat_ids(texts)
        counts = np.diff(bounds)
        n = counts.clip(max=length - 2)
        out = np.full((len(counts), length), self.pad_token_id, dtype=np.int64)
        out[:, 0] = self.sot_token_id
        cols = np.arange(length)
        place = np.arange(len(flat)) - np.repeat(bounds[:-1], counts)  # index within its text
        out[(cols >= 1) & (cols <= n[:, None])] = flat[place < length - 2]
        out[np.arange(len(counts)), n + 1] = self.eot_token_id
        if self._zeroed is not None:
            out[out == self._zeroed] = 0
        return torch.from_numpy(out)


class ClipTokenizer(TextTokenizer):
    """OpenCLIP's ``SimpleTokenizer`` (``clean='lower'``).

    Its regex yields "<start_of_text>" / "<end_of_text>" as one piece (unless glued to punctuation
    before it), which it maps to the special token; the pieces of a word are looked up here so.
    """

    def __init__(self, context_length: int = 77):
        backend = _clip_backend()
        sot, eot = backend.token_to_id(_SOT), backend.token_to_id(_EOT)
        super().__init__(backend, context_length, sot=sot, eot=eot)
        self._specials = {_SOT: (sot,), _EOT: (eot,)}

    def _tokenize_words(self, words: list[str]) -> list[tuple[int, ...]]:
        pre, bpe = self.backend.pre_tokenizer, self.backend.model
        return [tuple(chain.from_iterable(self._specials.get(p) or [t.id for t in bpe.tokenize(p)]
                                          for p, _ in pre.pre_tokenize_str(w))) for w in words]


@lru_cache(maxsize=None)
def _clip_backend() -> Tokenizer:
    """The BPE with OpenCLIP's vocabulary order: bytes, bytes + "</w>", merges, sot, eot."""
    gz = resources.files("clipa").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = [tuple(m.split()) for m in gzip.decompress(gz).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    # GPT-2's byte -> character map, in its order: printable bytes as themselves, then the rest from U+0100
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [_SOT, _EOT]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


def clip_tokenizer(context_length: int = 77) -> ClipTokenizer:
    """OpenCLIP's ``SimpleTokenizer`` (the backend is built once per process, in ~0.1 s)."""
    return ClipTokenizer(context_length)


def bert_tokenizer_file(path: str | Path | None) -> Path:
    """The tokenizer.json or vocab.txt to read: ``path`` (text.tokenizer_path), else $CLIPA_BERT_TOKENIZER,
    else bert-base-uncased from the Hugging Face hub (its cache). Each may be a file, a folder or a hub id."""
    how = "set text.tokenizer_path in the model config or the CLIPA_BERT_TOKENIZER environment " \
          "variable to a folder with bert-base-uncased's tokenizer.json or vocab.txt, or to that file"
    source = f"text.tokenizer_path={str(path)!r}" if path else f"{BERT_ENV}={os.environ.get(BERT_ENV)!r}"
    path = str(path or os.environ.get(BERT_ENV) or DEFAULT_BERT)
    local = Path(path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (local / name).is_file():
                return local / name
        raise FileNotFoundError(f"BERT tokenizer folder {local} (from {source}) holds neither "
                                f"tokenizer.json nor vocab.txt: {how}")
    if is_repo_id(path.split("@")[0]):
        try:
            return fetch(path, ("tokenizer.json", "vocab.txt"), what="the BERT WordPiece tokenizer of CLIPA models")
        except HubError as e:
            raise HubError(f"{e}; or {how}") from None
    raise FileNotFoundError(f"BERT tokenizer path {local} (from {source}) does not exist: {how}")


@lru_cache(maxsize=None)
def _bert_backend(file: Path) -> Tokenizer:
    if file.suffix == ".json":
        tok = Tokenizer.from_file(str(file))
    else:  # bert-base-uncased's pipeline: clean, split CJK, lower case, strip accents, WordPiece "##"
        tok = Tokenizer(models.WordPiece(models.WordPiece.read_file(str(file)), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.add_special_tokens([t for t in ("[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]")
                                if tok.token_to_id(t) is not None])
    tok.no_padding()
    tok.no_truncation()
    return tok


def bert_tokenizer(path: str | Path | None = None, context_length: int = 32) -> TextTokenizer:
    """OpenCLIP's ``HFTokenizer("bert-base-uncased", strip_sep_token=True)``.

    Its rows are ``[CLS] ids [SEP]`` padded and truncated like CLIP's, then every ``[SEP]`` set to 0,
    so the end-of-text id here is 0.
    """
    file = bert_tokenizer_file(path)
    tok = _bert_backend(file.absolute())  # not resolve(): hub cache files link to blobs without a suffix
    ids = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    missing = [t for t, i in ids.items() if i is None]
    if missing or not isinstance(tok.model, models.WordPiece):
        lacks = ", ".join(missing) or f"WordPiece (its model is {type(tok.model).__name__})"
        raise ValueError(f"{file} is not a BERT WordPiece tokenizer: it lacks {lacks}")
    return TextTokenizer(tok, context_length, sot=ids["[CLS]"], eot=0, pad=ids["[PAD]"], lower=False,
                         zeroed=ids["[SEP]"])


def tokenizer_for(model) -> TextTokenizer:
    """The tokenizer matching a built model's text config at its current context length."""
    return text_tokenizer(model.cfg.text, model.context_length)


def text_tokenizer(text, context_length: int) -> TextTokenizer:
    """The tokenizer a ``TextConfig`` names (``clip`` or ``bert``), at ``context_length``."""
    if text.tokenizer == "bert":
        return bert_tokenizer(text.tokenizer_path, context_length)
    return clip_tokenizer(context_length)

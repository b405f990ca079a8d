"""Part-of-speech taggers for syntax masking, one offline and one that matches OpenCLIP.

``builtin`` needs no download: NLTK's rule-based word tokenizer (no data files) and TextBlob's
copy of pattern's Brill lexicon and suffix rules (shipped inside the ``textblob`` wheel), plus a
few context rules below that fix pattern's frequent errors on captions. Each rule is right by the
Penn Treebank guidelines; none copies a known NLTK error ("brown" as a noun, "walks" as a plural
noun). ``nltk`` is ``nltk.word_tokenize`` + ``nltk.pos_tag``, exactly as OpenCLIP's
``syntax_mask_tokenize``; it needs the punkt_tab and averaged_perceptron_tagger_eng data (found
through ``NLTK_DATA``) and is never downloaded here.

A tagger maps a caption to its ``(word, Penn tag)`` pairs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

Tagger = Callable[[str], list[tuple[str, str]]]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NOUN = ("NN", "NNS", "NNP", "NNPS")
_BE = frozenset({"is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re"})
_PLACE = frozenset({"top", "back", "front", "side", "bottom", "edge", "middle", "end", "left", "right"})
# Tags that can start what follows a verb: an object, a preposition, an adverb, or the end.
_AFTER_VERB = ("DT", "PRP$", "IN", "RP", "RB", "TO", "CD", ".", ",", "")


def _is_verb(lexicon, word: str) -> bool:
    """Whether a third-person "-s" form has a verb reading: its stem or a stem inflection
    ("rides": ride/VB, "jumps": jumped/VBD) is a verb in pattern's lexicon."""
    stems = [word[:-1]] + ([word[:-2]] if word.endswith("es") else [])
    for s in stems:
        for form in (s, s + "ed", s + "d", s + "ing", s[:-1] + "ing", s + s[-1:] + "ing"):
            tag = lexicon.get(form)
            if tag and tag.startswith("VB"):
                return True
    return False


def _correct(lexicon, tagged: list[list[str]]) -> list[list[str]]:
    """One left-to-right pass of context rules over pattern's tags (Brill style)."""
    n = len(tagged)
    for i, (word, tag) in enumerate(tagged):
        low = word.lower()
        prev = tagged[i - 1][1] if i else ""
        prev_word = tagged[i - 1][0].lower() if i else ""
        nxt = tagged[i + 1][1] if i + 1 < n else ""
        next_word = tagged[i + 1][0].lower() if i + 1 < n else ""
        new = tag
        if i == 0 and word.istitle() and tag == "NNP" and lexicon.get(low):
            new = lexicon.get(low)  # sentence-initial capital: "Little girl ..." is JJ, not NNP
        elif "-" in word and lexicon.get(word) is None:  # unknown compound: its head decides
            head = lexicon.get(word.rsplit("-", 1)[1].lower()) or ""
            if head.startswith("NN"):
                new = "NN"  # "t-shirt"
            elif head.startswith("JJ") or head in ("VBN", "VBD"):
                new = "JJ"  # "blond-haired"
        elif tag == "NNS" and prev in ("NN", "NNP", "PRP") and nxt in _AFTER_VERB \
                and _is_verb(lexicon, low):
            new = "VBZ"  # singular subject + "-s" form: "a man rides a bike"
        elif tag == "VB" and prev in ("DT", "PRP$", "POS", "JJ"):
            new = "NN"  # no base-form verb after a determiner: "a stick", "a fruit stand"
        elif tag == "NN" and low.endswith("ing") and not nxt.startswith("NN") and (
                prev in _NOUN or prev == "PRP" or prev_word in _BE):
            new = "VBG"  # participle after its subject or "be": "a girl dancing", "are dancing"
        elif low in _PLACE and not tag.startswith("NN") and not nxt.startswith(("NN", "JJ")) \
                and (next_word == "of" or prev in ("DT", "PRP$", "POS")):
            new = "NN"  # "on top of", "his back", "to the left"
        elif low == "past" and nxt in ("DT", "PRP$", "PRP", "CD") + _NOUN:
            new = "IN"  # "walks past a dog"
        elif low == "nearby" and not nxt.startswith(("NN", "JJ")):
            new = "RB"  # "stands nearby"
        tagged[i] = [word, new]
    return tagged


@lru_cache(maxsize=None)
def _pattern():
    from nltk.tokenize import NLTKWordTokenizer  # the rule-based half of word_tokenize: no data
    from textblob._text import find_tags
    from textblob.en import lexicon

    return NLTKWordTokenizer(), find_tags, lexicon


def builtin_tag(text: str) -> list[tuple[str, str]]:
    """Offline tags: NLTK's word split, pattern's lexicon + suffix rules, then ``_correct``."""
    words, find_tags, lexicon = _pattern()
    out: list[tuple[str, str]] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        tokens = words.tokenize(sentence)
        if tokens:
            tagged = find_tags(tokens, lexicon=lexicon, morphology=lexicon.morphology)
            out.extend((w, t) for w, t in _correct(lexicon, tagged))
    return out


def nltk_tag(text: str) -> list[tuple[str, str]]:
    """OpenCLIP's tagging (``word_tokenize`` + ``pos_tag``); needs NLTK's data, never fetches it."""
    import nltk

    try:
        return nltk.pos_tag(nltk.word_tokenize(text))
    except LookupError as e:
        raise RuntimeError(
            "tagger 'nltk' needs NLTK's punkt_tab and averaged_perceptron_tagger_eng data; point "
            "NLTK_DATA at a folder holding them, or use tagger 'builtin', which needs none"
        ) from e


TAGGERS: dict[str, Tagger] = {"builtin": builtin_tag, "nltk": nltk_tag}


def get_tagger(name: str) -> Tagger:
    if name not in TAGGERS:
        raise ValueError(f"unknown tagger {name!r}; choose from {', '.join(TAGGERS)}")
    return TAGGERS[name]

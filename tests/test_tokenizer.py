"""clipa's tokenizers against OpenCLIP 3.3.0's, which are the reference: outputs must be equal.

CLIP BPE: ``open_clip.get_tokenizer`` (its SimpleTokenizer, no download). BERT WordPiece:
OpenCLIP's own ``HFTokenizer(strip_sep_token=True)`` (what its CLIPA configs use) loaded through
transformers from a small local vocabulary written by the test, so nothing is downloaded.
"""

import json
import random
import string
import tarfile
import time

import ftfy
import open_clip
import pytest
import torch
from open_clip.tokenizer import HFTokenizer, get_clean_fn

import clipa
from clipa.tokenizer import BERT_ENV, ClipTokenizer, _clip_backend, bert_tokenizer, clean_words

LENGTHS = (77, 32, 16, 8)

_rng = random.Random(0)
AWKWARD = [
    "", "   ", "\t\n \r\n",
    "a 🐶 dog 😀👍🏽 on a 🛹",
    "Café naïve résumé Ångström façade",
    "日本語のテキスト 中文字符 한국어",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;s &nbsp;x &amp &eacute;",
    "&lt;start_of_text&gt; a <b>&amp;</b>",
    "cafÃ© â€œquotedâ€\x9d Ã¼ber",
    "a\x00b\x07c \x1b[31mred\x1b[0m\x7f x\x0by\x0cz\x1c end \x85 next",
    "tabs\tand\nnew\r\nlines\rand  double  spaces ",
    "don't I'LL we'RE it's they'VE she'D i'M 's 'S ſ 'ſ",
    "2024 and 3.14 and 1,000,000 and ²³ ٣",
    "<start_of_text> x !<end_of_text> <END_OF_TEXT><start_of_text>'s",
    "ﬁ ligature ＦＵＬＬ width “curly” ‘quotes’",
    "Straße İstanbul ΟΔΟΣ ΑΣ\tb",
    "zero\u200bwidth \u2028sep\u2029 \xa0nbsp\u3000ideographic",
    "A man in a red shirt is climbing a rock !!!",
    " ".join(_rng.choice(["dog", "Running", "the", "Café", "2024", "don't", "!!", "日本", "&amp;", "x"])
             for _ in range(2000)),
]


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def flickr8k_captions(root) -> list[str]:
    """The ``captions`` lists of every ``.json`` member of every Flickr8k shard (40,000 in all)."""
    found = []
    for shard in sorted((root / "flickr8k").glob("*.tar")):
        with tarfile.open(shard) as tar:
            found += [c for m in tar if m.name.endswith(".json") for c in json.load(tar.extractfile(m))["captions"]]
    return found


def test_flickr8k_matches_openclip(shared_data, reference):
    captions = flickr8k_captions(shared_data)
    assert len(captions) == 40_000
    ours = clipa.get_tokenizer("ViT-B-32")
    assert torch.equal(ours(captions), reference(captions))


@pytest.mark.parametrize("length", LENGTHS)
def test_awkward_strings_match_openclip(reference, length):
    ours = clipa.get_tokenizer("ViT-B-32")
    assert torch.equal(ours(AWKWARD, length), reference(AWKWARD, length))
    for text in AWKWARD:  # one string at a time, as OpenCLIP is usually called
        assert torch.equal(ours(text, length), reference(text, length)), repr(text)


def test_encode_is_bare_and_untruncated(reference):
    ours = clipa.get_tokenizer("ViT-B-32")
    got = ours.encode(AWKWARD)
    assert got == [reference.encode(t) for t in AWKWARD]
    assert len(got[-1]) > 2000  # the 2,000-word caption, whole
    assert ours.encode("a dog") == [reference.encode("a dog")]
    assert ours.encode([]) == [] and ours([]).shape == (0, 77)


def test_truncation_forces_eot_last(reference):
    ours = clipa.get_tokenizer("ViT-B-32", context_length=8)
    ids = reference.encode("one two three four five six seven eight nine")
    assert ours("one two three four five six seven eight nine").tolist() == [[49406, *ids[:6], 49407]]
    assert ours("a dog").tolist() == [[49406, *reference.encode("a dog"), 49407, 0, 0, 0, 0]]
    assert ours("", 2).tolist() == [[49406, 49407]]
    with pytest.raises(ValueError, match="at least 2"):
        ours("a dog", 1)


def test_attributes_and_defaults():
    ours = clipa.get_tokenizer("ViT-B-32")
    assert (ours.sot_token_id, ours.eot_token_id, ours.pad_token_id) == (49406, 49407, 0)
    assert (ours.vocab_size, ours.context_length) == (49408, 77)
    assert ours(["a", "b"]).dtype == torch.long
    tiny = clipa.get_tokenizer("clipa-tiny")  # context from the model config
    assert tiny.context_length == 16 and tiny("a dog").shape == (1, 16)
    assert clipa.get_tokenizer("clipa-tiny", 32)("a dog").shape == (1, 32)


def test_vocabulary_is_openclips(reference):
    backend = _clip_backend()
    assert backend.get_vocab() == reference.encoder


def test_backend_builds_fast_and_once():
    start = time.perf_counter()
    _clip_backend.__wrapped__()
    assert time.perf_counter() - start < 1.0
    assert _clip_backend() is _clip_backend()


def test_word_memo_starts_afresh_when_full(reference):
    ours = ClipTokenizer()
    ours.memo_size = 5
    for text in AWKWARD[:-1]:
        assert ours.encode(text) == [reference.encode(text)]
        assert len(ours._memo) <= max(5, len(clean_words(text)))


@pytest.mark.parametrize("lower", [True, False])
def test_cleaning_matches_openclip(lower):
    clean = get_clean_fn("lower" if lower else "whitespace")
    for text in AWKWARD:
        assert " ".join(clean_words(text, lower)) == clean(text), repr(text)


def test_ftfy_leaves_plain_ascii_alone():
    """The premise of skipping ftfy: printable ASCII, tabs and newlines without '&' come back as is."""
    alphabet = string.printable.replace("&", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert ftfy.fix_text(text) == text, repr(text)


# ----------------------------------------------------------------------------- BERT WordPiece


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny uncased BERT vocabulary, with the config transformers needs to load it locally."""
    words = ["a", "dog", "cat", "the", "play", "##ing", "##s", "cafe", "don", "ll", "20", "##24", "日", "本"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits,
              *string.punctuation, *("##" + c for c in string.ascii_lowercase + string.digits), *words]
    (tmp_path / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                "do_lower_case": True}))
    return tmp_path


BERT_TEXTS = AWKWARD + ["A dog playing", "a [SEP] b [CLS] [sep] [PAD]", "x" * 150, " ".join(["dogs"] * 40)]


@pytest.mark.parametrize("length", [32, 16, 8])
def test_bert_matches_openclip_hf_tokenizer(bert_dir, length):
    reference = HFTokenizer(str(bert_dir), context_length=32, strip_sep_token=True, local_files_only=True)
    ours = bert_tokenizer(bert_dir, context_length=32)
    assert torch.equal(ours(BERT_TEXTS, length), reference(BERT_TEXTS, length))
    assert ours.encode(BERT_TEXTS) == [reference.tokenizer(t, add_special_tokens=False).input_ids
                                       for t in map(get_clean_fn("whitespace"), BERT_TEXTS)]
    # the same through tokenizer.json (what transformers saves), given as the file itself
    reference.save_pretrained(bert_dir / "saved")
    from_json = bert_tokenizer(bert_dir / "saved" / "tokenizer.json", context_length=32)
    assert torch.equal(from_json(BERT_TEXTS, length), reference(BERT_TEXTS, length))


def test_bert_attributes_and_config_lookup(bert_dir, monkeypatch):
    monkeypatch.setenv(BERT_ENV, str(bert_dir / "vocab.txt"))
    ours = clipa.get_tokenizer("ViT-L-14-CLIPA")
    assert ours.context_length == 32 and ours("a dog").shape == (1, 32)
    assert (ours.sot_token_id, ours.eot_token_id, ours.pad_token_id) == (2, 0, 0)  # [CLS]; [SEP] -> 0
    assert ours.vocab_size == len((bert_dir / "vocab.txt").read_text().split())
    # [CLS]; "a", the first letter after 5 specials; "dog", the first word after 5 + 26 letters
    # + 10 digits + 32 punctuation + 36 "##" pieces; then the [SEP] slot, zeroed
    assert ours("a dog").tolist()[0][:4] == [2, 5, 109, 0]


def test_bert_missing_files_error_is_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv(BERT_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:  # nothing configured, bert-base-uncased not cached, offline
        clipa.get_tokenizer("ViT-H-14-CLIPA")
    for needed in ("bert-base-uncased", "HF_HUB_OFFLINE=1", "text.tokenizer_path", BERT_ENV, "vocab.txt",
                   "tokenizer.json"):
        assert needed in str(err.value)
    monkeypatch.setenv(BERT_ENV, str(tmp_path))  # a folder without the files
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*{BERT_ENV}.*neither tokenizer.json nor vocab.txt"):
        clipa.get_tokenizer("ViT-H-14-CLIPA")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bert_tokenizer(tmp_path / "nowhere")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"lacks \[CLS\], \[SEP\], \[PAD\]"):
        bert_tokenizer(tmp_path)
    _clip_backend().save(str(tmp_path / "tokenizer.json"))  # a tokenizer, but not a BERT one
    with pytest.raises(ValueError, match="lacks"):
        bert_tokenizer(tmp_path)

"""Pretrained names, hub models, the BERT tokenizer from the hub, push back, and the wandb logger.

Nothing downloads: every test builds a Hugging Face hub cache in a temporary folder (the real
layout, ``models--ORG--NAME/{refs,snapshots}``) and sets offline mode. The references are
OpenCLIP 3.3.0's own loaders (``create_model_and_transforms("hf-hub:...")``, ``get_tokenizer``,
``list_pretrained`` / ``get_pretrained_cfg``) and TensorBoard's event files for wandb.
"""

import json
import string
import struct
import time

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file

import clipa
from clipa.config import ConfigError, load_config, to_dict
from clipa.hub import PRETRAINED, pretrained_config, push_to_hub, save_pretrained
from clipa.models import get_model_config
from clipa.models.openclip import from_openclip
from clipa.hubfile import HubError
from clipa.tokenizer import BERT_ENV

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOL = 1e-5


def seed_repo(cache, repo_id, files, commit=COMMIT, ref="main"):
    """Put ``{name: bytes}`` into ``cache`` as huggingface_hub stores a downloaded repository."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def folder_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache, offline (huggingface_hub reads both constants at call time)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(BERT_ENV, raising=False)
    return cache


def openclip_repo(tmp_path, model_cfg, name):
    """A random OpenCLIP model saved as OpenCLIP saves hub repositories: (model, files)."""
    model = open_clip.model.CLIP(**model_cfg).eval()
    model.visual.image_mean, model.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    with torch.no_grad():  # OpenCLIP zero-initialises some tensors; make every weight count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = tmp_path / name
    out.mkdir()
    save_file(model.state_dict(), str(out / "open_clip_model.safetensors"))
    save_config_for_hf(model, out / "open_clip_config.json", model_config=model_cfg)
    return model, folder_files(out)


def small_b32():
    cfg = open_clip.get_model_config("ViT-B-32")
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 2
    return cfg


@pytest.fixture
def bert_repo(hub):
    """A tiny uncased WordPiece vocabulary, cached as hub repository test-org/tiny-bert."""
    words = ["a", "dog", "cat", "the", "photo", "of", "play", "##ing", "##s"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits,
              *string.punctuation, *("##" + c for c in string.ascii_lowercase), *words]
    vocab = "\n".join(dict.fromkeys(tokens)) + "\n"
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    seed_repo(hub, "test-org/tiny-bert", {"vocab.txt": vocab.encode(),  # the files a BERT repository has
                                          "tokenizer_config.json": json.dumps(config).encode(),
                                          "config.json": json.dumps({"model_type": "bert"}).encode()})
    return len(dict.fromkeys(tokens))


def small_clipa(vocab_size):
    return {"embed_dim": 64,
            "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
                           "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True},
            "text_cfg": {"context_length": 16, "vocab_size": vocab_size, "hf_tokenizer_name": "test-org/tiny-bert",
                         "tokenizer_kwargs": {"strip_sep_token": True}, "width": 64, "heads": 2, "layers": 2,
                         "pool_type": "last", "no_causal_mask": True}}


TEXTS = ["a photo of a dog", "the cats playing", "", "A Dog! 2024 #dogs " * 6]


def assert_same_embeddings(ours, theirs, size, ours_tok, theirs_tok):
    ids = theirs_tok(TEXTS)
    assert torch.equal(ours_tok(TEXTS), ids)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert (ours.encode_image(images) - theirs.encode_image(images)).abs().max() < TOL
        assert (ours.encode_text(ids) - theirs.encode_text(ids)).abs().max() < TOL
    assert ours.logit_scale.item() == pytest.approx(theirs.logit_scale.item())


def test_hub_vit_b32_matches_openclip(hub, tmp_path):
    reference, files = openclip_repo(tmp_path, small_b32(), "b32")
    seed_repo(hub, "test-org/vit-b-32", files)
    ours = clipa.create_model("hf-hub:test-org/vit-b-32").eval()
    theirs, _, _ = open_clip.create_model_and_transforms("hf-hub:test-org/vit-b-32")
    assert_same_embeddings(ours, theirs.eval(), 224, clipa.get_tokenizer("hf-hub:test-org/vit-b-32"),
                           open_clip.get_tokenizer("hf-hub:test-org/vit-b-32"))
    assert_same_embeddings(ours, reference, 224, clipa.get_tokenizer("ViT-B-32"), open_clip.get_tokenizer("ViT-B-32"))
    # a local folder, a pinned revision, and the weights alone under a registry name, all the same
    for name in (f"local-dir:{tmp_path / 'b32'}", f"hf-hub:{tmp_path / 'b32'}", f"hf-hub:test-org/vit-b-32@{COMMIT}"):
        other = clipa.create_model(name)
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), other.state_dict().values()))
    plain = clipa.create_model("ViT-B-32", pretrained="hf-hub:test-org/vit-b-32", vision={"layers": 2},
                               text={"layers": 2})
    assert torch.equal(plain.visual.proj, ours.visual.proj)
    with pytest.raises(HubError, match="test-org/vit-b-32@v9.*not in the local Hugging Face cache"):
        clipa.create_model("hf-hub:test-org/vit-b-32@v9")


def test_hub_clipa_bert_matches_openclip(hub, bert_repo, tmp_path):
    _, files = openclip_repo(tmp_path, small_clipa(bert_repo), "clipa")
    seed_repo(hub, "test-org/clipa-small", files)
    ours = clipa.create_model("hf-hub:test-org/clipa-small").eval()
    assert ours.cfg.text.tokenizer == "bert" and ours.cfg.text.tokenizer_path == "test-org/tiny-bert"
    theirs, _, _ = open_clip.create_model_and_transforms("hf-hub:test-org/clipa-small")
    ours_tok = clipa.get_tokenizer("hf-hub:test-org/clipa-small")
    assert ours_tok.context_length == 16
    assert_same_embeddings(ours, theirs.eval(), 64, ours_tok, open_clip.get_tokenizer("hf-hub:test-org/clipa-small"))


def test_cold_cache_is_one_clear_line(hub):
    for call in (lambda: clipa.create_model("hf-hub:UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B"),
                 lambda: clipa.create_model("ViT-L-14-CLIPA", pretrained="datacomp1b"),
                 lambda: clipa.get_tokenizer("hf-hub:UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B")):
        with pytest.raises(HubError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message
        for needed in ("UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B", "HF_HUB_OFFLINE=1", "hf download", "local folder"):
            assert needed in message
    with pytest.raises(HubError, match="datacomp1b.*neither a file nor a pretrained tag of ViT-B-32.*openai"):
        clipa.create_model("ViT-B-32", pretrained="datacomp1b")


def test_bert_tokenizer_resolves_from_the_hub(hub, bert_repo, monkeypatch, tmp_path):
    from clipa.tokenizer import bert_tokenizer

    with pytest.raises(HubError) as err:  # nothing configured: bert-base-uncased, not cached
        clipa.get_tokenizer("ViT-L-14-CLIPA")
    for needed in ("bert-base-uncased", "HF_HUB_OFFLINE=1", "text.tokenizer_path", BERT_ENV, "vocab.txt"):
        assert needed in str(err.value)
    tiny = hub / "models--test-org--tiny-bert" / "snapshots" / COMMIT
    seed_repo(hub, "bert-base-uncased", folder_files(tiny))
    from_hub = clipa.get_tokenizer("ViT-L-14-CLIPA")
    reference = open_clip.tokenizer.HFTokenizer("bert-base-uncased", context_length=32, strip_sep_token=True)
    assert torch.equal(from_hub(TEXTS), reference(TEXTS))
    (tmp_path / "local").mkdir()  # the environment variable still wins over the hub
    (tmp_path / "local" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\ndog\n")
    monkeypatch.setenv(BERT_ENV, str(tmp_path / "local"))
    assert clipa.get_tokenizer("ViT-L-14-CLIPA")("a dog").tolist()[0][:4] == [2, 4, 5, 0]
    assert bert_tokenizer("test-org/tiny-bert").vocab_size == bert_repo  # a hub id as text.tokenizer_path


def test_pretrained_tags_are_openclips():
    listed = set(open_clip.list_pretrained())
    for (model, tag), entry in PRETRAINED.items():
        assert (model, tag) in listed
        cfg = open_clip.get_pretrained_cfg(model, tag)
        assert cfg["hf_hub"] == entry.repo + "/", (model, tag)  # "/": the repository's default weights file
        assert bool(cfg.get("quick_gelu")) == entry.quick_gelu, (model, tag)
        assert to_dict(get_model_config(model)) == to_dict(from_openclip(
            {"model_cfg": open_clip.get_model_config(model)})), model
        # the weights come with the preprocessing they were trained with (CLIPA's: ImageNet's, squashed)
        served = to_dict(pretrained_config(model, tag).preprocess)
        for key in ("mean", "std", "interpolation", "resize_mode"):
            want = cfg.get(key, getattr(open_clip.transform.PreprocessCfg(), key))
            assert served[key] == (list(want) if isinstance(want, tuple) else want), (model, tag, key)
    assert {m for m, t in PRETRAINED if t == "openai"} >= {"ViT-B-32", "ViT-B-16", "ViT-L-14"}
    assert {m for m, _ in PRETRAINED if "CLIPA" in m} == {f"ViT-{s}-14-CLIPA{r}" for s in ("L", "H", "bigG")
                                                         for r in ("", "-336")}
    assert clipa.list_pretrained() == sorted(PRETRAINED)


def test_openai_tag_builds_quickgelu_and_reads_pickle_safely(hub, tmp_path):
    """OpenAI's weights (a ``.bin`` here) need QuickGELU; ``ViT-B-32`` + ``openai`` gets it."""
    cfg = open_clip.get_model_config("ViT-B-32-quickgelu")
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    reference, files = openclip_repo(tmp_path, cfg, "openai")
    torch.save(reference.state_dict(), tmp_path / "openai.bin")
    seed_repo(hub, PRETRAINED[("ViT-B-32", "openai")].repo,
              {"open_clip_pytorch_model.bin": (tmp_path / "openai.bin").read_bytes()})
    small = {"vision": {"layers": 1}, "text": {"layers": 1}}
    for name in ("ViT-B-32", "ViT-B-32-quickgelu"):
        ours = clipa.create_model(name, pretrained="openai", **small).eval()
        assert ours.cfg.vision.act == ours.cfg.text.act == "quick_gelu"
        tok = clipa.get_tokenizer(name)
        assert_same_embeddings(ours, reference, 224, tok, open_clip.get_tokenizer("ViT-B-32"))


@pytest.mark.parametrize("section, key, value", [
    ("vision_cfg", "timm_model_name", "vit_base_patch16_224"),
    ("text_cfg", "hf_model_name", "roberta-base"),
    ("vision_cfg", "attentional_pool", True),
    ("text_cfg", "proj_type", "mlp"),
    ("model_cfg", "custom_text", True),
    ("vision_cfg", "layers", [3, 4, 6, 3]),
])
def test_unsupported_towers_name_the_setting(hub, tmp_path, section, key, value):
    model_cfg = small_b32()
    (model_cfg if section == "model_cfg" else model_cfg[section])[key] = value
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    with pytest.raises(ConfigError, match=rf"unsupported setting {section}(\.{key})?="):
        clipa.create_model(f"local-dir:{tmp_path / 'odd'}")


def test_pushed_layout_loads_in_openclip(hub, bert_repo, tmp_path, monkeypatch):
    model = clipa.create_model("clipa-tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    uploads = []

    def upload_folder(repo_id, folder_path, revision, commit_message):  # stands in for the hub: into the cache
        from pathlib import Path
        uploads.append(repo_id)
        seed_repo(hub, repo_id, folder_files(Path(folder_path)))
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: uploads.append(("create", repo_id)))
    assert push_to_hub(model, "me/tiny").endswith(COMMIT)
    assert uploads == [("create", "me/tiny"), "me/tiny"]
    snap = hub / "models--me--tiny" / "snapshots" / COMMIT
    assert {p.name for p in snap.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors", "README.md"}
    assert 'create_model_and_transforms("hf-hub:me/tiny")' in (snap / "README.md").read_text()
    theirs, _, _ = open_clip.create_model_and_transforms("hf-hub:me/tiny")
    assert_same_embeddings(model, theirs.eval(), 32, clipa.get_tokenizer("clipa-tiny"),
                           open_clip.get_tokenizer("hf-hub:me/tiny"))
    # a BERT model round-trips too: our layout back into clipa, with the tokenizer named by hub id
    _, files = openclip_repo(tmp_path, small_clipa(bert_repo), "clipa")
    seed_repo(hub, "test-org/clipa-small", files)
    clipa_model = clipa.create_model("hf-hub:test-org/clipa-small").eval()
    save_pretrained(clipa_model, tmp_path / "saved")
    assert {"vocab.txt", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    back, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'saved'}")
    assert_same_embeddings(clipa_model, back.eval(), 64, clipa.get_tokenizer("hf-hub:test-org/clipa-small"),
                           open_clip.get_tokenizer(f"local-dir:{tmp_path / 'saved'}"))


def test_export_command_pushes_to_the_hub(hub, tmp_path, monkeypatch, capsys):
    """`clipa export WEIGHTS --model NAME --push-to-hub ORG/REPO` uploads a layout OpenCLIP loads."""
    from pathlib import Path

    from safetensors.torch import save_file as save

    model = clipa.create_model("clipa-tiny").eval()
    save(model.state_dict(), str(tmp_path / "w.safetensors"))

    def upload_folder(repo_id, folder_path, revision, commit_message):
        seed_repo(hub, repo_id, folder_files(Path(folder_path)))
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: None)
    from clipa.cli import main

    assert main(["export", str(tmp_path / "w.safetensors"), "--model", "clipa-tiny", "--push-to-hub", "me/cli"]) == 0
    assert "pushed to https://huggingface.co/me/cli" in capsys.readouterr().out
    theirs, _, _ = open_clip.create_model_and_transforms("hf-hub:me/cli")
    assert_same_embeddings(model, theirs.eval(), 32, clipa.get_tokenizer("clipa-tiny"),
                           open_clip.get_tokenizer("hf-hub:me/cli"))
    assert main(["export", str(tmp_path / "w.safetensors"), "--model", "clipa-tiny",
                 "--format", "hf", "--push-to-hub", "me/cli"]) == 2  # one-line error: openclip layout only


# ----------------------------------------------------------------------------- wandb


def wandb_history(run_dir):
    """Every ``history`` row of an offline wandb run's ``.wandb`` file (LevelDB-log framed protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, rows, kinds = 7, 32768, b"", [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            kinds.append(record.WhichOneof("record_type"))
            if kinds[-1] == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    assert rows, f"no history in {run_dir} ({len(data)} bytes; records {kinds})"
    return rows


def test_wandb_offline_gets_the_tensorboard_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clipa.train.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, ["stages=[{samples: 96, batch_size: 16, warmup: 1}]", "train.log_every=2",
                             "train.progress=false", f"train.output_dir={tmp_path / 'run'}", "train.threads=1",
                             "eval.max_samples=64", "train.wandb={project: clipa-test, tags: [t]}"])
    Trainer(cfg).fit()
    tb = EventAccumulator(str(tmp_path / "run" / "tb"))
    tb.Reload()
    expected = {(tag, e.step): e.value for tag in tb.Tags()["scalars"] for e in tb.Scalars(tag)}
    assert {tag for tag, _ in expected} >= {"train/loss", "train/lr", "eval/acc1"}
    run_dir = next((tmp_path / "run" / "wandb").glob("offline-run-*"))

    def logged() -> dict:
        return {(k, row["_step"]): v for row in wandb_history(run_dir) for k, v in row.items() if not k.startswith("_")}

    # wandb's service process may still be writing its file when finish() returns on a loaded machine
    for _ in range(30):
        try:
            if logged().keys() == expected.keys():
                break
        except AssertionError:
            pass
        time.sleep(1)
    got = logged()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key  # TensorBoard stores float32
    assert (tmp_path / "run" / "wandb_run_id").read_text().strip()


def test_wandb_selected_but_missing_fails_before_work(monkeypatch):
    import builtins

    from clipa.train.logging import check_loggers

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "wandb" else real_import(name, *a, **k))
    cfg = load_config(None, ["train.wandb={project: x}"])
    with pytest.raises(ConfigError, match=r"train.wandb .* pip install 'clipa\[wandb\]'"):
        check_loggers(cfg.train)
    check_loggers(load_config(None, []).train)  # not selected: nothing to check


def test_eval_command_takes_hub_names(hub, tmp_path, capsys):
    from clipa.cli import main

    assert main(["eval", "hf-hub:UCSC-VLAA/ViT-H-14-CLIPA-336-datacomp1B", "--data", str(tmp_path)]) == 2
    assert main(["eval", "datacomp1b", "--model", "ViT-H-14-CLIPA-336", "--data", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("clipa: error: hub repository UCSC-VLAA/ViT-H-14-CLIPA-336-"
                                                   "datacomp1B") for line in lines)

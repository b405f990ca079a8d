"""The front door: models by name, with their weights and preprocessing, and the way back.

Three kinds of name, resolved the way OpenCLIP 3.3.0 resolves them (:func:`model_source`):

- ``create_model("ViT-H-14-CLIPA-336", pretrained="datacomp1b")``: an OpenCLIP pretrained tag,
  looked up in ``PRETRAINED`` (hub repository per model and tag, and the preprocessing the
  weights were trained with; the weights file is the repository's ``open_clip_model.safetensors``,
  else ``open_clip_pytorch_model.bin``).
- ``create_model("hf-hub:ORG/REPO[@REVISION]")``: a repository in OpenCLIP's hub layout; its
  ``open_clip_config.json`` gives the towers, the preprocessing and the tokenizer
  (``models.openclip``). ``local-dir:DIR`` (or the folder's path) reads the same files from a folder.
- ``create_model(NAME, pretrained="hf-hub:ORG/REPO")``: a registry model with a repository's weights.

:func:`load_model` is what ``clipa eval`` and ``clipa export`` take: any of those, or a clipa run,
checkpoint or weights file. Downloads go through ``huggingface_hub`` (``clipa.hubfile``).
``save_pretrained`` and ``push_to_hub`` write the same layout from a clipa model, so OpenCLIP
loads it back.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import ConfigError, ModelConfig, RunConfig, from_dict, merge, to_dict, validate_model
from .data.builtin import with_source_preprocess
from .hubfile import HubError, fetch, split_revision
from .models import CLIP, get_model_config, load_weights
from .models.openclip import CONFIG_FILE, WEIGHTS_FILES, from_openclip, with_preprocess

SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class Tag:
    """Where OpenCLIP keeps one pretrained tag's weights, and how they were trained."""

    repo: str
    quick_gelu: bool = False  # trained with QuickGELU (OpenAI's weights): the model must use it
    preprocess: dict = dataclasses.field(default_factory=dict)  # OpenCLIP's preprocess_cfg of the tag


# OpenCLIP's pretrained table's preprocessing where it is not CLIP's: the CLIPA weights' (``_apcfg``:
# ImageNet's statistics, squashed, bilinear) and the one tag trained with Inception's (0.5).
_CLIPA_PREPROCESS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
                     "resize_mode": "squash"}
_INCEPTION_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _table() -> dict[tuple[str, str], Tag]:
    openai = {"ViT-B-32": "timm/vit_base_patch32_clip_224.openai",
              "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
              "ViT-L-14": "timm/vit_large_patch14_clip_224.openai"}
    clipa = {("ViT-L-14-CLIPA", "datacomp1b"): "ViT-L-14-CLIPA-datacomp1B",
             ("ViT-L-14-CLIPA-336", "datacomp1b"): "ViT-L-14-CLIPA-336-datacomp1B",
             ("ViT-H-14-CLIPA", "datacomp1b"): "ViT-H-14-CLIPA-datacomp1B",
             ("ViT-H-14-CLIPA-336", "laion2b"): "ViT-H-14-CLIPA-336-laion2B",
             ("ViT-H-14-CLIPA-336", "datacomp1b"): "ViT-H-14-CLIPA-336-datacomp1B",
             ("ViT-bigG-14-CLIPA", "datacomp1b"): "ViT-bigG-14-CLIPA-datacomp1B",
             ("ViT-bigG-14-CLIPA-336", "datacomp1b"): "ViT-bigG-14-CLIPA-336-datacomp1B"}
    laion = {("ViT-B-32", "laion2b_s34b_b79k"): "CLIP-ViT-B-32-laion2B-s34B-b79K",
             ("ViT-B-32", "datacomp_xl_s13b_b90k"): "CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
             ("ViT-B-16", "laion2b_s34b_b88k"): "CLIP-ViT-B-16-laion2B-s34B-b88K",
             ("ViT-B-16", "datacomp_xl_s13b_b90k"): "CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
             ("ViT-L-14", "laion2b_s32b_b82k"): "CLIP-ViT-L-14-laion2B-s32B-b82K",
             ("ViT-L-14", "datacomp_xl_s13b_b90k"): "CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
             ("ViT-H-14", "laion2b_s32b_b79k"): "CLIP-ViT-H-14-laion2B-s32B-b79K",
             ("ViT-bigG-14", "laion2b_s39b_b160k"): "CLIP-ViT-bigG-14-laion2B-39B-b160k"}
    table = {key: Tag(f"UCSC-VLAA/{repo}", preprocess=_CLIPA_PREPROCESS) for key, repo in clipa.items()}
    table.update({key: Tag(f"laion/{repo}") for key, repo in laion.items()})
    table[("ViT-L-14", "laion2b_s32b_b82k")] = Tag(f"laion/{laion[('ViT-L-14', 'laion2b_s32b_b82k')]}",
                                                   preprocess=_INCEPTION_PREPROCESS)
    for model, repo in openai.items():  # OpenCLIP lists the tag under both names; it is QuickGELU either way
        table[(model, "openai")] = table[(f"{model}-quickgelu", "openai")] = Tag(repo, quick_gelu=True)
    return table


PRETRAINED: dict[tuple[str, str], Tag] = _table()


def _clean_tag(tag: str) -> str:
    """OpenCLIP's tag spelling: ``DataComp-1B``-style names are looked up as ``datacomp_1b``."""
    return tag.lower().replace("-", "_")


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """``(model, tag)`` pairs ``create_model(model, pretrained=tag)`` resolves, or ``"model:tag"``
    strings with ``as_str``, as ``open_clip.list_pretrained``."""
    return [f"{m}:{t}" if as_str else (m, t) for m, t in sorted(PRETRAINED)]


def list_pretrained_tags_by_model(model: str) -> list[str]:
    """The pretrained tags of ``model`` (``open_clip.list_pretrained_tags_by_model``)."""
    return sorted(tag for name, tag in PRETRAINED if name == model)


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """The models that have pretrained tag ``tag`` (``open_clip.list_pretrained_models_by_tag``)."""
    return sorted(name for name, t in PRETRAINED if t == _clean_tag(tag))


def is_pretrained_cfg(model: str, tag: str) -> bool:
    """Whether ``model`` has pretrained tag ``tag`` (``open_clip.is_pretrained_cfg``)."""
    return (model, _clean_tag(tag)) in PRETRAINED


def get_pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """``open_clip.get_pretrained_cfg``'s entry for a tag, as far as clipa keeps it: the hub
    repository (``hf_hub``, OpenCLIP's spelling with a trailing slash), the preprocessing and
    ``quick_gelu`` where the weights need it; ``{}`` for an unknown tag."""
    if not is_pretrained_cfg(model, tag):
        return {}
    cfg = pretrained_config(model, _clean_tag(tag)).preprocess
    entry = PRETRAINED[(model, _clean_tag(tag))]
    return {"hf_hub": f"{entry.repo}/", **dataclasses.asdict(cfg), **({"quick_gelu": True} if entry.quick_gelu else {})}



# ----------------------------------------------------------------------------- resolving names


@dataclass
class ModelSource:
    """What a name stands for: the config to build (its preprocessing included) and the weights to load."""

    config: ModelConfig
    weights: Path | None


def is_hub_name(name: str | Path) -> bool:
    return isinstance(name, str) and name.startswith(SCHEMAS)


def hub_name(name: str | Path) -> str | None:
    """``name`` as a ``hf-hub:``/``local-dir:`` name: itself, ``local-dir:DIR`` for a folder in
    OpenCLIP's layout named by its path (``open_clip_config.json`` beside the weights: any
    OpenCLIP save, or ``clipa export``'s), or None for anything else."""
    if is_hub_name(name):
        return str(name)
    folder = Path(name).expanduser()
    return f"local-dir:{folder}" if folder.is_dir() and (folder / CONFIG_FILE).is_file() else None


def _repo(name: str) -> str:
    return name.split(":", 1)[1]


def read_hub_config(name: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> ModelConfig:
    """The model config of ``hf-hub:ORG/REPO[@REV]`` or ``local-dir:DIR`` (its ``open_clip_config.json``,
    read as data: a file that does not parse or describes an unsupported model is one error naming it)."""
    path = fetch(_repo(name), (CONFIG_FILE,), what="OpenCLIP model config", revision=revision, cache_dir=cache_dir)
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return from_openclip(config, where=str(path))


def hub_weights(repo: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A repository's OpenCLIP weights file, safetensors first (as OpenCLIP)."""
    return fetch(repo, WEIGHTS_FILES, what="OpenCLIP weights", revision=revision, cache_dir=cache_dir)


def _with_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    if not overrides:
        return cfg
    out = from_dict(ModelConfig, merge(to_dict(cfg), overrides), prefix="model.")
    validate_model(out)
    return out


def model_source(name: str, pretrained: str | Path | None = None, *, revision: str | None = None,
                 cache_dir: str | Path | None = None, **overrides: Any) -> ModelSource:
    """The config and weights file a model name and ``pretrained`` value stand for (downloading if needed).

    A folder in OpenCLIP's layout, as ``name`` or as ``pretrained``, brings its own config: as
    ``pretrained`` it must describe a model of ``name``'s shape (its own config then decides
    the rest, such as QuickGELU), else the error names the first parameter that differs."""
    if (as_hub := hub_name(name)) is not None:
        if pretrained is not None:
            raise ValueError(f"{as_hub} names its own weights: leave pretrained={str(pretrained)!r} out")
        cfg = _with_overrides(read_hub_config(as_hub, revision=revision, cache_dir=cache_dir), overrides)
        return ModelSource(cfg, hub_weights(_repo(as_hub), revision=revision, cache_dir=cache_dir))
    if pretrained is None:
        return ModelSource(get_model_config(name, **overrides), None)
    if (folder := hub_name(pretrained)) is not None and folder.startswith("local-dir:"):
        source = model_source(folder, **overrides)
        _same_shapes(get_model_config(name, **overrides), source.config, f"model {name}", f"pretrained={pretrained}")
        return source
    if is_hub_name(str(pretrained)):  # a registry model with a repository's weights
        return ModelSource(get_model_config(name, **overrides),
                           hub_weights(_repo(str(pretrained)), revision=revision, cache_dir=cache_dir))
    tag = PRETRAINED.get((name, _clean_tag(str(pretrained))))
    if tag is None:
        path = Path(pretrained)
        if path.exists():
            return ModelSource(get_model_config(name, **overrides), path)
        if isinstance(pretrained, Path) or path.suffix or len(path.parts) > 1:
            raise FileNotFoundError(f"checkpoint not found: {path}")
        known = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise HubError(f"pretrained={str(pretrained)!r} is neither a file nor a pretrained tag of {name} "
                       f"(its tags: {known}; or pretrained='hf-hub:ORG/REPO')")
    return ModelSource(pretrained_config(name, _clean_tag(str(pretrained)), **overrides),
                       hub_weights(tag.repo, revision=revision, cache_dir=cache_dir))


def pretrained_config(name: str, tag: str, **overrides: Any) -> ModelConfig:
    """Registry model ``name`` as pretrained tag ``tag``'s weights were trained: with QuickGELU
    where they need it, with the tag's preprocessing."""
    entry = PRETRAINED[(name, tag)]
    if entry.quick_gelu:  # OpenCLIP only warns here; the weights are wrong without QuickGELU
        overrides = merge({"vision": {"act": "quick_gelu"}, "text": {"act": "quick_gelu"}}, overrides)
    cfg = get_model_config(name, **overrides)
    if entry.preprocess and "preprocess" not in overrides:
        cfg = with_preprocess(cfg, entry.preprocess, f"{name} {tag}")
    return cfg


def _same_shapes(ours: ModelConfig, theirs: ModelConfig, ours_name: str, theirs_name: str) -> None:
    """Fail, naming the first parameter that differs, unless both configs build the same
    parameter shapes (position tables aside: they are resized on load). Built on the meta
    device, so nothing is allocated."""
    with torch.device("meta"):
        want, got = CLIP(ours).state_dict(), CLIP(theirs).state_dict()
    for key in sorted(want.keys() | got.keys()):
        if "positional_embedding" in key:
            continue
        a, b = want.get(key), got.get(key)
        if a is None or b is None or a.shape != b.shape:
            shape = lambda t: "absent" if t is None else list(t.shape)  # noqa: E731
            raise ConfigError(f"{theirs_name} holds another architecture than {ours_name}: {key} is {shape(b)} "
                              f"there, {shape(a)} here (its {CONFIG_FILE} says what it is: set model and "
                              "model_overrides to match it, or name the folder as the model)")


def build(source: ModelSource) -> CLIP:
    """The model a :class:`ModelSource` describes, with its weights when it names some."""
    model = CLIP(source.config)
    if source.weights is not None:
        checkpoint.load_checkpoint(model, source.weights)
    return model


# OpenCLIP's precision names; "amp*" keep fp32 weights (autocast is the caller's), the others cast
# the whole model (OpenCLIP's "fp16"/"bf16" keep LayerNorm weights in fp32 through its own
# LayerNormFp32; torch's LayerNorm kernels accumulate in fp32 either way).
PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "fp16", "bf16", "pure_fp16", "pure_bf16")


def get_cast_dtype(precision: str) -> torch.dtype | None:
    """``open_clip.get_cast_dtype``: the dtype OpenCLIP builds its towers in for ``precision``."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def get_input_dtype(precision: str) -> torch.dtype | None:
    """``open_clip.get_input_dtype``: the dtype of a model's inputs (and here its weights) at
    ``precision``; None for fp32 weights."""
    return {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16,
            "fp16": torch.float16, "pure_fp16": torch.float16}.get(precision)


def _forced(overrides: dict[str, Any], quick_gelu: bool, image_size: int | tuple[int, int] | None,
            context_length: int | None) -> dict[str, Any]:
    """``create_model``'s ``force_*`` keywords (and OpenCLIP's ``quick_gelu`` model keyword) as
    clipa model overrides, merged under the caller's own."""
    forced: dict[str, Any] = {}
    if quick_gelu or overrides.pop("quick_gelu", False):
        forced = {"vision": {"act": "quick_gelu"}, "text": {"act": "quick_gelu"}}
    if image_size is not None:
        sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(sides) != 2 or sides[0] != sides[1]:
            raise ValueError(f"force_image_size={image_size!r}: clipa's image tower takes square images")
        forced = merge(forced, {"vision": {"image_size": sides[0]}})
    if context_length is not None:
        forced = merge(forced, {"text": {"context_length": context_length}})
    return merge(forced, overrides)


def _refused(jit: bool, force_custom_text: bool, weights_only: bool, precision: str) -> None:
    if jit:
        raise ValueError("jit=True: clipa's models are not TorchScript; torch.compile(model) (train.compile in "
                         "a run) is the way to compile them")
    if force_custom_text:
        raise ValueError("force_custom_text=True: clipa builds OpenCLIP's built-in text transformer only")
    checkpoint.refuse_unpickling(weights_only)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: one of {', '.join(PRECISIONS)}")


def create_model(model_name: str, pretrained: str | Path | None = None, load_weights: bool = True,
                 precision: str = "fp32", device: str | torch.device = "cpu", jit: bool = False,
                 force_quick_gelu: bool = False, force_custom_text: bool = False,
                 force_patch_dropout: float | None = None, force_image_size: int | tuple[int, int] | None = None,
                 force_preprocess_cfg: dict[str, Any] | None = None, force_context_length: int | None = None,
                 pretrained_image: bool = False, pretrained_text: bool = True,
                 pretrained_image_path: str | Path | None = None, pretrained_text_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, output_dict: bool | None = None,
                 require_pretrained: bool = False, weights_only: bool = True, *, revision: str | None = None,
                 **model_kwargs: Any) -> CLIP:
    """``open_clip.create_model`` with its arguments, in training mode as there: a registry name
    with optional weights (a file, a clipa run or checkpoint, an OpenCLIP pretrained tag, a folder
    in OpenCLIP's layout, or ``hf-hub:ORG/REPO``), or a whole model: ``hf-hub:ORG/REPO[@REV]``,
    ``local-dir:DIR`` or such a folder's path.

    ``model_kwargs`` are clipa model config fields (``embed_dim``, ``vision={...}``,
    ``text={...}``, ``init_logit_scale``, ``init_logit_bias``, ...; OpenCLIP's ``quick_gelu``
    too). ``pretrained_image`` and ``pretrained_text`` change nothing, as in OpenCLIP for these
    towers (no tower has base weights of its own); ``force_patch_dropout`` drops that fraction
    of patches in training, as a stage's ``image_reduction: {strategy: random}``. ``jit``,
    ``force_custom_text`` and ``weights_only=False`` are refused, naming why."""
    from .config import ImageReductionConfig

    _refused(jit, force_custom_text, weights_only, precision)
    overrides = _forced(model_kwargs, force_quick_gelu, force_image_size, force_context_length)
    source = model_source(model_name, pretrained, revision=revision, cache_dir=cache_dir, **overrides)
    if force_preprocess_cfg:
        source.config = with_preprocess(source.config, force_preprocess_cfg, "force_preprocess_cfg")
    if not load_weights:
        source.weights = None
    if require_pretrained and source.weights is None:
        raise ValueError(f"require_pretrained: {model_name} with pretrained={pretrained!r} names no weights")
    model = build(source)
    for path, into in ((pretrained_image_path, model.visual), (pretrained_text_path, model)):
        if path is not None:  # OpenCLIP loads a tower's file non-strictly; its text tower is the model here
            into.load_state_dict(checkpoint.read_weights(path), strict=False)
    if force_patch_dropout:
        model.visual.set_token_reduction(ImageReductionConfig(strategy="random", ratio=force_patch_dropout))
    model.output_dict = bool(output_dict)
    return model.to(device=device, dtype=get_input_dtype(precision))


def run_model_source(run: RunConfig, saved: ModelConfig | None = None) -> ModelSource:
    """The model a clipa run trains: the config its checkpoint recorded (``saved``: its weights
    come from the checkpoint), else the run's ``model`` and ``pretrained`` weights, with the
    preprocessing of a built-in training source (``data.builtin.with_source_preprocess``)."""
    if saved is not None:
        return ModelSource(saved, None)
    source = model_source(run.model, run.pretrained, **run.model_overrides)
    return ModelSource(with_source_preprocess(source.config, run), source.weights)


def load_model(source: str | Path, model_name: str | None = None) -> tuple[CLIP, RunConfig | None]:
    """What ``clipa eval`` and ``clipa export`` take, in eval mode with its run config (None
    unless a clipa checkpoint): a clipa run, checkpoint or weights file (``model_name`` naming
    a weights file's architecture), a ``hf-hub:``/``local-dir:`` model, or with ``model_name``
    one of its pretrained tags. A clipa checkpoint rebuilds its own architecture at its last
    stage's sizes; with ``model_name`` any path loads into that architecture at its registry sizes."""
    if hub_name(source) is not None or (model_name is not None and not Path(source).exists()):
        return create_model(model_name or str(source), None if model_name is None else str(source)).eval(), None
    if model_name is not None:
        model = build(ModelSource(get_model_config(model_name), Path(source)))
        return model.eval(), checkpoint.read_run_config(checkpoint.resolve(source))
    found, _ = checkpoint.open_checkpoint(source, checkpoint.logger.warning)  # checked once; damage named
    if not found.is_step:
        raise ValueError(f"{found.path} is a weights file: name its architecture (e.g. --model ViT-B-32)")
    state = checkpoint.read_state(found.path)
    where = found.path / checkpoint.STATE_FILE
    run = state.run_config(where)
    # the weights come from the checkpoint: nothing pretrained is fetched for the architecture
    model = CLIP(run_model_source(dataclasses.replace(run, pretrained=None), state.model_config(where)).config)
    load_weights(model, checkpoint.read_model(found), found.path)
    return model.eval(), run


def get_tokenizer(model_name: str, context_length: int | None = None, cache_dir: str | Path | None = None, *,
                  revision: str | None = None):
    """``open_clip.get_tokenizer``: the tokenizer of a registry model, or of the ``hf-hub:`` /
    ``local-dir:`` model whose config names it, cutting to ``context_length`` (default: the model's)."""
    from .tokenizer import text_tokenizer

    if (as_hub := hub_name(model_name)) is not None:
        text = read_hub_config(as_hub, revision=revision, cache_dir=cache_dir).text
    else:
        text = get_model_config(model_name).text
    return text_tokenizer(text, context_length or text.context_length)


# ----------------------------------------------------------------------------- the way back


def model_card(model: CLIP, repo_id: str | None = None) -> str:
    """A short README for the hub page: what the model is and how OpenCLIP and clipa load it."""
    name = f"hf-hub:{repo_id}" if repo_id else "local-dir:THIS_FOLDER"
    v, t = model.cfg.vision, model.cfg.text
    return (f"---\nlibrary_name: open_clip\ntags:\n- clip\n- clipa\n- zero-shot-image-classification\n---\n\n"
            f"# {repo_id or 'clipa model'}\n\nA CLIP model trained with clipa (ViT image tower "
            f"{model.visual.image_size} px / patch {v.patch_size}, {v.layers} layers of width {v.width}; "
            f"text tower {t.layers} layers of width {t.width}, {t.tokenizer} tokenizer, context "
            f"{model.context_length}), saved in OpenCLIP's hub layout.\n\n```python\nimport open_clip\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms(\"{name}\")\n"
            f"tokenizer = open_clip.get_tokenizer(\"{name}\")\n\nimport clipa\n"
            f"model = clipa.create_model(\"{name}\")\ntokenizer = clipa.get_tokenizer(\"{name}\")\n```\n")


def save_pretrained(model: CLIP, out_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write OpenCLIP's hub layout: ``open_clip_config.json``, ``open_clip_model.safetensors``, ``README.md``.

    A BERT model also gets its tokenizer files, since OpenCLIP reads a ``local-dir:`` model's tokenizer
    from the folder; a tokenizer that lives in a local folder is named as ``repo_id`` on the hub.
    """
    from .export import export_openclip
    from .hubfile import is_repo_id
    from .tokenizer import bert_tokenizer_file

    text = model.cfg.text
    tokenizer_name = repo_id if (repo_id and text.tokenizer == "bert" and text.tokenizer_path
                                 and not is_repo_id(text.tokenizer_path)) else None
    out = export_openclip(model, out_dir, tokenizer_name=tokenizer_name)
    (out / "README.md").write_text(model_card(model, repo_id))
    if text.tokenizer == "bert":
        source = bert_tokenizer_file(text.tokenizer_path)
        shutil.copyfile(source, out / source.name)
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                               "do_lower_case": True}) + "\n")
    return out


def push_to_hub(model: CLIP, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload clipa model (OpenCLIP layout)") -> str:
    """Create ``repo_id`` if needed and upload the OpenCLIP layout; returns the commit URL.

    The token is ``huggingface_hub``'s (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import create_repo, upload_folder

    repo_id, revision = split_revision(repo_id, revision)
    create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, repo_id=repo_id)
        return str(upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message))

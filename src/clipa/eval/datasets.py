"""Evaluation data sets: CLIP_benchmark's local webdataset layout, image folders, caption shards
and the ImageNet family, each as an ``EvalSet`` whose loader yields ``(images, labels)`` or
``(images, captions per image)``.

Images go through OpenCLIP's evaluation transform (short side resized bicubic, centre crop,
OpenAI mean and std), so a model sees exactly what it would see under OpenCLIP and CLIP_benchmark.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..data import CLIP_MEAN, CLIP_STD
from ..data.samples import IMAGE_EXTS
from . import imagenet

_IMAGE_FILES = {f".{e}" for e in IMAGE_EXTS} | {".bmp", ".ppm", ".tif", ".tiff"}


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def eval_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """OpenCLIP's ``image_transform(size, is_train=False)``: PIL image -> normalised [3, S, S] tensor."""
    from torchvision import transforms as T  # imported here: a second or more, and ``clipa --help`` needs none

    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


@dataclass
class EvalSet:
    """A data set ready to evaluate: ``kind`` is "classification" or "retrieval"."""

    name: str
    kind: str
    dataset: Dataset | IterableDataset
    classnames: list[str] | None = None
    templates: list[Any] | None = None
    size: int | None = None  # number of images, when known (progress bars)


# ----------------------------------------------------------------------------- webdataset shards


def expand_braces(pattern: str) -> list[str]:
    """``a-{0..3}.tar`` -> four names (webdataset's brace notation, ranges keep zero padding)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [n for i in range(int(lo), int(hi) + 1) for n in expand_braces(f"{head}{i:0{width}d}{tail}")]


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, bytes]]:
    """Samples of one webdataset shard: files sharing a key (name up to the first dot) grouped."""
    sample: dict[str, Any] = {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            d, _, base = member.name.rpartition("/")
            key, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{d}/{key}" if d else key
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext.lower()] = tar.extractfile(member).read()
    if sample:
        yield sample


def _decode_image(sample: dict[str, bytes]) -> Image.Image:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return Image.open(io.BytesIO(sample[ext]))
    raise KeyError(f"sample {sample['__key__']} has no image ({', '.join(IMAGE_EXTS)})")


def captions_of(sample: dict[str, bytes]) -> list[str]:
    """All captions: ``.json`` with a "captions" list, else ``.txt`` lines (CLIP_benchmark's retrieval)."""
    if "json" in sample:
        meta = json.loads(sample["json"])
        if isinstance(meta, dict) and meta.get("captions"):
            return [str(c) for c in meta["captions"]]
    if "txt" in sample:
        return [line for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
    raise KeyError(f"sample {sample['__key__']} has no captions (.json 'captions' or .txt)")


def shard_quotas(num_shards: int, max_samples: int | None) -> list[int | None]:
    """How many samples each shard gives: all, or ``max_samples`` spread evenly over the shards
    (so a slice of a class-sorted set such as CIFAR-10's covers every class)."""
    if max_samples is None:
        return [None] * num_shards
    return [max_samples // num_shards + (i < max_samples % num_shards) for i in range(num_shards)]


class ShardDataset(IterableDataset):
    """Shards read in order; with DataLoader workers, each worker takes every n-th shard."""

    def __init__(self, shards: Sequence[str | Path], transform: Callable, target: str,
                 max_samples: int | None = None):
        self.shards = [str(s) for s in shards]
        self.transform = transform
        self.target = target  # "cls" | "captions"
        self.quotas = shard_quotas(len(self.shards), max_samples)

    def __iter__(self):
        info = get_worker_info()
        picked = list(zip(self.shards, self.quotas))
        if info is not None:
            picked = picked[info.id::info.num_workers]
        for shard, quota in picked:
            for n, sample in enumerate(iter_tar_samples(shard)):
                if quota is not None and n >= quota:
                    break
                image = self.transform(_decode_image(sample))
                if self.target == "cls":
                    yield image, int(sample["cls"].decode().strip())
                else:
                    yield image, captions_of(sample)


def _shards_in(folder: Path) -> list[Path]:
    nshards = folder / "nshards.txt"
    if nshards.exists():
        return [folder / f"{i}.tar" for i in range(int(nshards.read_text().strip()))]
    return sorted(folder.glob("*.tar"), key=_natural_key)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def clip_benchmark_set(root: str | Path, split: str = "test", transform: Callable | None = None,
                       max_samples: int | None = None, name: str | None = None) -> EvalSet:
    """CLIP_benchmark's local layout: ``root/split/{0..N-1}.tar``, ``classnames.txt``,
    ``zeroshot_classification_templates.txt``, optional ``dataset_type.txt`` ("retrieval")."""
    root = Path(root)
    shards = _shards_in(root / split)
    if not shards:
        raise FileNotFoundError(f"no shards in {root / split}")
    kind_file = root / "dataset_type.txt"
    retrieval = kind_file.exists() and kind_file.read_text().strip().lower() == "retrieval"
    name = name or root.name
    if retrieval:
        return EvalSet(name, "retrieval", ShardDataset(shards, transform, "captions", max_samples))
    classnames_file = root / "classnames.txt"
    if not classnames_file.exists():
        raise FileNotFoundError(f"{classnames_file} is missing (one class name per line, line i = class i)")
    templates_file = root / "zeroshot_classification_templates.txt"
    templates = _read_lines(templates_file) if templates_file.exists() else list(imagenet.OPENAI_IMAGENET_TEMPLATES)
    size = _count_samples(shards, max_samples)
    return EvalSet(name, "classification", ShardDataset(shards, transform, "cls", max_samples),
                   _read_lines(classnames_file), templates, size)


def _count_samples(shards: Sequence[Path], max_samples: int | None) -> int:
    """Images the set yields (one ``.cls`` per sample); cheap, tar headers only."""
    n = 0
    for shard, quota in zip(shards, shard_quotas(len(shards), max_samples)):
        with tarfile.open(shard, "r|*") as tar:
            count = sum(1 for m in tar if m.name.endswith(".cls"))
        n += count if quota is None else min(count, quota)
    return n


def caption_shards_set(data: str | Path, transform: Callable | None = None,
                       max_samples: int | None = None, name: str | None = None) -> EvalSet:
    """Retrieval on webdataset shards whose samples carry several captions (``.json`` or ``.txt``):
    a ``.tar`` file, a brace pattern ``dir/test-{0..3}.tar``, or a folder of shards."""
    data = str(data)
    path = Path(data)
    shards = _shards_in(path) if path.is_dir() else [Path(s) for s in expand_braces(data)]
    missing = [s for s in shards if not s.exists()]
    if not shards or missing:
        raise FileNotFoundError(f"no retrieval shards at {data}" + (f" (missing {missing[0]})" if missing else ""))
    if name is None:  # "flickr8k-test-0" for flickr8k/test-0.tar, the folder's name for a folder
        name = path.name if path.is_dir() else f"{path.parent.name}-{path.name.split('.')[0]}".strip("-{")
    return EvalSet(name, "retrieval", ShardDataset(shards, transform, "captions", max_samples))


# ----------------------------------------------------------------------------- image folders


class LabeledFiles(Dataset):
    def __init__(self, items: list[tuple[Path, int]], transform: Callable):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im), label


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_FILES)


def _folder_items(root: Path, label_of: Callable[[str], int | None], max_samples: int | None) -> list:
    items = [(f, label) for d in sorted(p for p in root.iterdir() if p.is_dir())
             if (label := label_of(d.name)) is not None for f in _images_under(d)]
    if not items:
        raise FileNotFoundError(f"no labelled images under {root}")
    return items[:max_samples] if max_samples is not None else items


def image_folder_set(root: str | Path, classnames_file: str | Path, templates_file: str | Path | None = None,
                     transform: Callable | None = None, max_samples: int | None = None,
                     name: str | None = None) -> EvalSet:
    """torchvision-style ``root/<class folder>/<image>``; line i of the class-name file names the
    i-th class folder in sorted order."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    classnames = _read_lines(Path(classnames_file))
    if len(classnames) != len(folders):
        raise ValueError(f"{classnames_file} has {len(classnames)} names for {len(folders)} class folders in {root}")
    index = {f: i for i, f in enumerate(folders)}
    templates = _read_lines(Path(templates_file)) if templates_file else list(imagenet.OPENAI_IMAGENET_TEMPLATES)
    items = _folder_items(root, index.get, max_samples)
    return EvalSet(name or root.name, "classification", LabeledFiles(items, transform),
                   classnames, templates, len(items))


IMAGENET_VARIANTS = ("imagenet-val", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r", "objectnet")


def imagenet_set(variant: str, root: str | Path, transform: Callable | None = None,
                 max_samples: int | None = None) -> EvalSet:
    """ImageNet-1k validation and its robustness sets from local folders, with OpenAI's class
    names and 80 templates. Folders are WordNet ids (val, Sketch, A, R), class indices (V2:
    ``0``..``999``), or ObjectNet's release (``images/`` and ``mappings/``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{variant}: folder not found: {root}")
    templates = list(imagenet.OPENAI_IMAGENET_TEMPLATES)
    if variant == "objectnet":
        return _objectnet_set(root, transform, templates, max_samples)
    if variant in ("imagenet-a", "imagenet-r"):
        subset = imagenet.IMAGENET_A_INDICES if variant == "imagenet-a" else imagenet.IMAGENET_R_INDICES
        labels = {imagenet.IMAGENET_WNIDS[c]: j for j, c in enumerate(subset)}
        classnames = [imagenet.IMAGENET_CLASSNAMES[c] for c in subset]
    elif variant == "imagenet-v2":
        labels = {str(i): i for i in range(1000)}
        classnames = list(imagenet.IMAGENET_CLASSNAMES)
    elif variant in ("imagenet-val", "imagenet-sketch"):
        labels = {w: i for i, w in enumerate(imagenet.IMAGENET_WNIDS)}
        classnames = list(imagenet.IMAGENET_CLASSNAMES)
    else:
        raise ValueError(f"unknown ImageNet variant {variant!r}; known: {', '.join(IMAGENET_VARIANTS)}")
    items = _folder_items(root, labels.get, max_samples)
    return EvalSet(variant, "classification", LabeledFiles(items, transform), classnames, templates, len(items))


def _objectnet_set(root: Path, transform, templates, max_samples) -> EvalSet:
    """The 113 ObjectNet classes that map to ImageNet, named by their ObjectNet labels
    (lower case), as CLIP_benchmark and wise-ft evaluate it."""
    base = root / "objectnet-1.0" if (root / "objectnet-1.0").is_dir() else root
    mappings = base / "mappings" if (base / "mappings").is_dir() else root
    folder_to_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text())
    to_imagenet = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text())
    folders = sorted(f for f, label in folder_to_label.items() if label in to_imagenet)
    index = {f: i for i, f in enumerate(folders)}
    items = _folder_items(base / "images", index.get, max_samples)
    classnames = [folder_to_label[f].lower() for f in folders]
    return EvalSet("objectnet", "classification", LabeledFiles(items, transform), classnames, templates, len(items))


# ----------------------------------------------------------------------------- loading


def collate(batch: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
    images = torch.stack([b[0] for b in batch])
    targets = [b[1] for b in batch]
    return images, (torch.tensor(targets) if isinstance(targets[0], int) else targets)


def loader(evalset: EvalSet, batch_size: int = 256, workers: int = 0) -> DataLoader:
    """Batches in data order (no shuffling); workers split shards or indices."""
    return DataLoader(evalset.dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      shuffle=False, persistent_workers=False)


def num_batches(evalset: EvalSet, batch_size: int) -> int | None:
    return None if evalset.size is None else -(-evalset.size // batch_size)

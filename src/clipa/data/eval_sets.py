"""Evaluation data sets: CLIP_benchmark's local webdataset layout, image folders, caption shards
and the ImageNet family, each as an ``EvalSet`` whose batches are ``(images, labels)`` or
``(images, captions per image)``.

Shards are read by the training reader (:meth:`Source.read`, :func:`decode_sample`), so a
corrupt or truncated image, a decompression bomb or a corrupt tar header costs exactly the
samples it damages, each counted by its reason in a :class:`Tally` and logged; nothing shortens
an evaluation silently. Images go through the transform the caller gives, the model's own
(:func:`~.transforms.build_eval_transform` of its preprocessing: OpenCLIP's evaluation transform),
so a model sees exactly what it would see under OpenCLIP and CLIP_benchmark.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import braceexpand
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from . import imagenet
from .samples import BadSample, DecodeOptions, captions_of, count_skip, decode_sample, describe, label_of
from .sources import Shard, Source
from .tar import ShardError

_IMAGE_FILES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}
# Images are decoded as stored: the evaluation transform converts to RGB after cropping, as OpenCLIP.
_DECODE = DecodeOptions(mode=None)


@dataclass
class EvalSet:
    """A data set ready to evaluate."""

    name: str
    kind: Literal["classification", "retrieval"]
    dataset: Dataset | IterableDataset
    classnames: list[str] | None = None
    templates: list[Any] | None = None
    size: int | None = None  # number of samples, when known (progress bars)
    drawn: str | None = None  # how a subset was drawn (``max_samples``), for the results; None: the whole set


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be evaluated, in place of it in a batch."""

    reason: str  # a key of clipa.data.samples.REASONS
    where: str


def _evaluated(raw: dict, target: Callable[[dict], Any], transform: Callable) -> tuple[torch.Tensor, Any] | Skipped:
    """(image tensor, label or captions) of a raw sample, or why it is skipped."""
    try:
        found, image = decode_sample(raw, _DECODE, target)
    except BadSample as e:
        return Skipped(e.reason, f"{raw.get('__url__', '')} {raw['__key__']}: {e}")
    return transform(image), found


_TARGETS: dict[str, Callable[[dict], Any]] = {"cls": label_of, "captions": partial(captions_of, lines=True)}


# ----------------------------------------------------------------------------- webdataset shards


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def spread(total: int, wanted: int | None) -> list[int]:
    """``wanted`` of ``total`` positions evenly spaced over the whole order (``i * total // wanted``),
    or all of them. Any run of n consecutive items (one class of a class-sorted set such as
    CIFAR-10's) keeps n * wanted / total of them to within one, whatever the order is."""
    if wanted is None or wanted >= total:
        return list(range(total))
    return [i * total // wanted for i in range(wanted)]


def describe_subset(kept: int, total: int) -> str | None:
    """How :func:`spread` drew a subset, for the results (None for the whole set)."""
    if kept >= total:
        return None
    return f"{kept:,} of {total:,} samples, evenly spaced over the whole set (1 in {total / kept:.3g})"


class ShardSet(IterableDataset):
    """Shards read in order; with DataLoader workers, each worker takes every n-th shard. With
    ``max_samples``, the samples kept are spread over every shard's whole length
    (:func:`spread`); the others' payloads are skipped unread."""

    def __init__(self, shards: Sequence[str | Path], transform: Callable, target: Literal["cls", "captions"],
                 max_samples: int | None = None):
        self.source = Source(" ".join(map(str, shards)), [Shard(str(s)) for s in shards])
        self.transform = transform
        self.target = target
        self.picked: list[frozenset[int] | None] = [None] * len(self.source.shards)
        self.drawn = None
        if max_samples is not None:
            lengths = [self._groups_in(i) for i in range(len(self.source.shards))]
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            chosen = spread(sum(lengths), max_samples)
            self.picked = [frozenset(g - start for g in chosen if start <= g < start + n)
                           for start, n in zip(starts, lengths)]
            self.drawn = describe_subset(len(chosen), sum(lengths))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any] | Skipped]:
        info = get_worker_info()
        shard_ids = list(range(len(self.source.shards)))
        if info is not None:
            shard_ids = shard_ids[info.id::info.num_workers]
        for shard_id in shard_ids:
            picked = self.picked[shard_id]
            keep, stop = (lambda i: True), None
            if picked is not None:  # stop after the last picked sample
                keep, stop = picked.__contains__, max(picked, default=-1) + 1
            try:
                for _, raw in self.source.read(shard_id, keep, stop):
                    yield _evaluated(raw, _TARGETS[self.target], self.transform)
            except ShardError as e:  # truncated or unreadable: the rest of the shard is lost, and counted
                yield Skipped(e.reason, str(e))

    def count(self) -> int:
        """Samples the set yields, skipped ones included, from the tar headers alone (payloads
        are skipped); for progress bars."""
        return sum(self._groups_in(i) if p is None else len(p) for i, p in enumerate(self.picked))

    def _groups_in(self, shard_id: int) -> int:
        last = -1

        def seen(index: int) -> bool:
            nonlocal last
            last = index
            return False

        with contextlib.suppress(ShardError):  # the group in progress stands for the lost rest
            for _ in self.source.read(shard_id, seen):
                pass
        return last + 1


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
        dataset = ShardSet(shards, transform, "captions", max_samples)
        return EvalSet(name, "retrieval", dataset, drawn=dataset.drawn)
    classnames_file = root / "classnames.txt"
    if not classnames_file.exists():
        raise FileNotFoundError(f"{classnames_file} is missing (one class name per line, line i = class i)")
    templates_file = root / "zeroshot_classification_templates.txt"
    templates = _read_lines(templates_file) if templates_file.exists() else list(imagenet.OPENAI_IMAGENET_TEMPLATES)
    dataset = ShardSet(shards, transform, "cls", max_samples)
    return EvalSet(name, "classification", dataset, _read_lines(classnames_file), templates, dataset.count(),
                   dataset.drawn)


def _split_of(shard: Path) -> str:
    """The split a shard's name gives: "train" for train-3.tar, "" for 00003.tar."""
    return re.sub(r"[-_]?\d+$", "", shard.name.split(".")[0])


def split_shards(folder: Path, shards: list[Path], split: str) -> list[Path]:
    """The shards of ``split`` when a folder holds several splits' (train-0.tar, val-0.tar,
    test-0.tar): pooling them would score the training images with the test ones."""
    splits = sorted({_split_of(s) for s in shards})
    if len(splits) <= 1:
        return shards
    chosen = [s for s in shards if _split_of(s) == split]
    if not chosen:
        raise FileNotFoundError(f"{folder} holds the shards of several splits ({', '.join(splits)}) and none of "
                                f"split {split!r}: choose one with --split")
    return chosen


def caption_shards_set(data: str | Path, transform: Callable | None = None,
                       max_samples: int | None = None, name: str | None = None, split: str = "test") -> EvalSet:
    """Retrieval on webdataset shards whose samples carry several captions (``.json`` or ``.txt``
    lines): a ``.tar`` file, a brace pattern ``dir/test-{0..3}.tar``, or a folder of shards (only
    ``split``'s when the folder holds several splits)."""
    data = str(data)
    path = Path(data)
    shards = split_shards(path, _shards_in(path), split) if path.is_dir() else \
        [Path(s) for s in braceexpand.braceexpand(data)]
    missing = [s for s in shards if not s.exists()]
    if not shards or missing:
        raise FileNotFoundError(f"no retrieval shards at {data}" + (f" (missing {missing[0]})" if missing else ""))
    if name is None:  # "flickr8k-test-0" for flickr8k/test-0.tar, "flickr8k-test" for that folder's test split
        name = (f"{path.name}-{_split_of(shards[0])}".strip("-") if path.is_dir()
                else f"{path.parent.name}-{path.name.split('.')[0]}".strip("-{"))
    dataset = ShardSet(shards, transform, "captions", max_samples)
    return EvalSet(name, "retrieval", dataset, drawn=dataset.drawn)


# ----------------------------------------------------------------------------- image folders


class LabeledFiles(Dataset):
    def __init__(self, items: list[tuple[Path, int]], transform: Callable):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | Skipped:
        path, label = self.items[i]
        raw: dict = {"__key__": str(path)}
        try:
            raw["jpg"] = path.read_bytes()  # any image format: PIL reads the kind from the bytes
        except OSError:
            pass  # counted as missing_image
        return _evaluated(raw, lambda _: label, self.transform)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_FILES)


def _folder_items(root: Path, label_of: Callable[[str], int | None],
                  max_samples: int | None) -> tuple[list, str | None]:
    """(image, label) pairs, class folder by class folder, and how a ``max_samples`` subset was
    drawn (spread over every class folder, not the first ones)."""
    items = [(f, label) for d in sorted(p for p in root.iterdir() if p.is_dir())
             if (label := label_of(d.name)) is not None for f in _images_under(d)]
    if not items:
        raise FileNotFoundError(f"no labelled images under {root}")
    kept = [items[i] for i in spread(len(items), max_samples)]
    return kept, describe_subset(len(kept), len(items))


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
    items, drawn = _folder_items(root, index.get, max_samples)
    return EvalSet(name or root.name, "classification", LabeledFiles(items, transform),
                   classnames, templates, len(items), drawn)


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
    items, drawn = _folder_items(root, labels.get, max_samples)
    return EvalSet(variant, "classification", LabeledFiles(items, transform), classnames, templates, len(items),
                   drawn)


def _objectnet_set(root: Path, transform, templates, max_samples) -> EvalSet:
    """The 113 ObjectNet classes that map to ImageNet, named by their ObjectNet labels
    (lower case), as CLIP_benchmark and wise-ft evaluate it."""
    base = root / "objectnet-1.0" if (root / "objectnet-1.0").is_dir() else root
    mappings = base / "mappings" if (base / "mappings").is_dir() else root
    folder_to_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text())
    to_imagenet = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text())
    folders = sorted(f for f, label in folder_to_label.items() if label in to_imagenet)
    index = {f: i for i, f in enumerate(folders)}
    items, drawn = _folder_items(base / "images", index.get, max_samples)
    classnames = [folder_to_label[f].lower() for f in folders]
    return EvalSet("objectnet", "classification", LabeledFiles(items, transform), classnames, templates, len(items),
                   drawn)


def open_data(data: str | Path, transform: Callable, split: str = "test", classnames: str | None = None,
              templates: str | None = None, max_samples: int | None = None) -> EvalSet:
    """Find out what ``data`` is: a CLIP_benchmark folder (``split/*.tar`` + ``classnames.txt``
    or ``dataset_type.txt``), retrieval shards (a ``.tar``, a brace pattern, a folder of shards)
    or an image folder (class sub-folders; needs ``classnames``); its images go through
    ``transform`` (PIL image -> model input)."""
    path = Path(data)
    benchmark = path.is_dir() and (path / split).is_dir() and any((path / split).glob("*.tar"))
    if path.is_dir() and not benchmark and not any(path.glob("*.tar")):
        if classnames is None:
            raise FileNotFoundError(f"{path} looks like an image folder; give its class names with --classnames FILE")
        return image_folder_set(path, classnames, templates, transform, max_samples)
    if benchmark:
        evalset = clip_benchmark_set(path, split, transform, max_samples)
    else:
        evalset = caption_shards_set(path if path.is_dir() else data, transform, max_samples, split=split)
    if templates is not None:  # given templates replace the set's own, and must exist
        if evalset.kind != "classification":
            raise ValueError(f"--templates {templates}: {evalset.name} is a retrieval set, which uses no templates")
        evalset.templates = _read_lines(Path(templates))
    return evalset


# ----------------------------------------------------------------------------- loading


@dataclass
class Tally:
    """Samples scored and skipped (by reason) while a set is read: what a result reports."""

    scored: int = 0  # images
    captions: int | None = None  # captions with them (retrieval sets; None for classification)
    skipped: dict[str, int] = field(default_factory=dict)

    def record(self, drawn: str | None = None) -> dict:
        """A result's ``"samples"``: ``{"scored": n, "skipped": {reason: n, ...}}`` (reasons
        sorted; none: empty), with ``"captions": n`` after ``scored`` for a retrieval set and
        ``"drawn"`` last when a subset was drawn (:func:`describe_subset`)."""
        captions = {} if self.captions is None else {"captions": self.captions}
        subset = {} if drawn is None else {"drawn": drawn}
        return {"scored": self.scored, **captions, "skipped": dict(sorted(self.skipped.items())), **subset}

    def __str__(self) -> str:
        return f"{self.scored} samples scored, {sum(self.skipped.values())} skipped ({describe(self.skipped)})"


def collate(batch: list) -> tuple[torch.Tensor, Any, list[Skipped]]:
    """(images, labels or captions, skipped samples) of a batch; images may be empty."""
    kept = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [b for b in batch if isinstance(b, Skipped)]
    if not kept:
        return torch.empty(0), [], skipped
    images = torch.stack([b[0] for b in kept])  # [B, 3, S, S]
    targets = [b[1] for b in kept]
    return images, (torch.tensor(targets) if isinstance(targets[0], int) else targets), skipped


def batches(evalset: EvalSet, batch_size: int = 256, workers: int = 0,
            tally: Tally | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
    """``(images, targets)`` in data order (no shuffling; workers split shards or indices);
    skipped samples are left out of the batches and counted in ``tally``."""
    tally = Tally() if tally is None else tally
    loader = DataLoader(evalset.dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        shuffle=False, persistent_workers=False)
    for images, targets, skipped in loader:
        for sample in skipped:
            count_skip(tally.skipped, sample.reason, sample.where)
        if len(targets):
            tally.scored += len(targets)
            if evalset.kind == "retrieval":
                tally.captions = (tally.captions or 0) + sum(map(len, targets))
            yield images, targets


def num_batches(evalset: EvalSet, batch_size: int) -> int | None:
    return None if evalset.size is None else -(-evalset.size // batch_size)

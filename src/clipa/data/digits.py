"""The built-in default data: scikit-learn's 1,797 real handwritten digits (8x8), captioned.

Small enough to train a CLIP on two CPU cores in a couple of minutes, real enough that
zero-shot accuracy means something: 20% of the images are held out, and the held-out
evaluation uses prompt templates never seen in training.

A built-in source behind the training loader protocol (:mod:`clipa.data.loader`): batches of
uint8 images that the trainer normalises by the one :func:`~clipa.data.transforms.normalise`
with the model's preprocessing (a model trained here takes the digits' own, ``builtin.GREY``),
exact resume.
"""

from __future__ import annotations

from typing import Callable, Generator

import torch
import torch.nn.functional as F

from .loader import check_state

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

TRAIN_TEMPLATES = [
    "a handwritten {d}",
    "the digit {w}",
    "a photo of the number {d}",
    "a scan of a handwritten {w}",
    "{w}",
    "the number {d}, written by hand",
    "a blurry {w}",
    "a small image of a {d}",
    "handwriting showing {w}",
    "digit {d}",
    "a {w} drawn with a pen",
    "number {w}",
]

# Held out from training: the zero-shot evaluation only ever sees these.
EVAL_TEMPLATES = ["a drawing of the number {c}.", "an image of a handwritten {c}.", "a picture of the digit {c}."]
CLASSNAMES = WORDS

HOLDOUT = 0.2
STATE_VERSION = 1


def _load(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [N, 8, 8] in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(HOLDOUT * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 8, 8] grey digits in [0, 1] -> [N, 1, size, size] (bilinear)."""
    return F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, S, S] in [0, 1] -> the loaders' uint8 RGB [N, 3, S, S]."""
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _augment(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Small zoom and shift per image, batched through one affine grid; the black background
    (0) fills what moves in from outside."""
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


class DigitsLoader:
    """Endless, seeded, exactly resumable batches of (image, caption) from the training split."""

    def __init__(
        self,
        image_size: int,
        batch_size: int,
        tokenize: Callable[[list[str]], torch.Tensor],
        seed: int = 0,
        state: dict | None = None,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ):
        images, labels, _, _ = _load()
        self.images = _resize(images, image_size)
        self.labels = labels
        self.batch_size, self.tokenize, self.seed = batch_size, tokenize, seed
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.epoch, self.offset = 0, 0
        if state:
            self._load(state)

    def _fingerprint(self) -> dict:
        return {"source": "digits", "seed": self.seed, "global_batch": self.batch_size * self.world_size}

    def state_dict(self) -> dict:
        """JSON-able position after the last batch yielded."""
        return {"version": STATE_VERSION, "fingerprint": self._fingerprint(),
                "epoch": self.epoch, "offset": self.offset}

    def _load(self, state: dict) -> None:
        check_state(state, STATE_VERSION, self._fingerprint())
        self.epoch, self.offset = state["epoch"], state["offset"]

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing to end: the digits are made in this process."""

    def __iter__(self) -> Generator[dict, None, None]:
        n = len(self.labels)
        global_batch = self.batch_size * self.world_size
        while True:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
            while self.offset + global_batch <= n:
                # Draws are made for the whole global batch, then sliced: any number of
                # ranks sees exactly the batch one process would.
                gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.offset)) % 2**62)
                idx = order[self.offset : self.offset + global_batch]
                choice = torch.randint(len(TRAIN_TEMPLATES), (global_batch,), generator=gen)
                scale = 0.85 + 0.3 * torch.rand(global_batch, generator=gen)
                shift = (torch.rand(global_batch, 2, generator=gen) - 0.5) * 0.3
                mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
                idx, choice, scale, shift = idx[mine], choice[mine], scale[mine], shift[mine]
                captions = [
                    TRAIN_TEMPLATES[t].format(d=int(lbl), w=WORDS[int(lbl)])
                    for t, lbl in zip(choice.tolist(), self.labels[idx].tolist())
                ]
                images = _to_uint8(_augment(self.images[idx], scale, shift))  # [B, 3, S, S]
                self.offset += global_batch
                yield {"images": images.pin_memory() if self.pin_memory else images, "text": self.tokenize(captions),
                       "keys": [f"digit{i}" for i in idx.tolist()]}
            self.epoch, self.offset = self.epoch + 1, 0


def eval_split(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images, uint8 ``[N, 3, S, S]`` as the loader gives training ones, and their labels."""
    _, _, images, labels = _load()
    return _to_uint8(_resize(images, image_size)), labels

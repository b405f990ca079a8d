"""Linear probe: scikit-learn logistic regression on frozen, cached image features.

As in CLIP (Radford et al. 2021, appendix A.3), the L2 strength is chosen by a sweep on a
validation split carved out of the training features, then the probe is refit on all of them.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .zeroshot import classification_metrics

DEFAULT_CS = tuple(10.0 ** e for e in range(-2, 5))


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)


def _logits(clf, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """Decision scores in a [N, num_classes] matrix; classes absent from training score -inf."""
    scores = clf.decision_function(x)
    if scores.ndim == 1:  # binary problems give one column: the score of classes_[1]
        scores = np.stack([-scores, scores], axis=1)
    out = torch.full((len(x), num_classes), -math.inf, dtype=torch.float64)
    out[:, torch.as_tensor(clf.classes_)] = torch.from_numpy(scores.astype(np.float64))
    return out


def choose_c(x: np.ndarray, y: np.ndarray, cs: Sequence[float], val_fraction: float, max_iter: int,
             seed: int, on_fit: Callable[[], object] = lambda: None) -> tuple[float, dict[float, float]]:
    """The inverse L2 strength with the best validation top-1 (a stratified split of the training
    set); ``on_fit()`` is called after each fit (progress)."""
    from sklearn.model_selection import train_test_split
    fit_x, val_x, fit_y, val_y = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    scores = {}
    for c in cs:
        scores[c] = float((_fit(fit_x, fit_y, c, max_iter, seed).predict(val_x) == val_y).mean())
        on_fit()
    return max(cs, key=lambda c: (scores[c], -c)), scores  # ties: the stronger regularisation


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    c: float | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall`` of a logistic-regression probe, plus the ``C`` used.

    The fits take longer than encoding the features on big sets, so ``show_progress`` gives them
    a bar of their own: one fit per swept C, then the final one."""
    x, y = train_features.double().numpy(), train_labels.long().numpy()
    fits = tqdm(total=(len(cs) if c is None else 0) + 1, desc=f"linear probe on {len(y):,} features", unit="fit",
                leave=False, dynamic_ncols=True, disable=not show_progress)
    if c is None:
        c, _ = choose_c(x, y, cs, val_fraction, max_iter, seed, fits.update)
    clf = _fit(x, y, c, max_iter, seed)
    fits.update()
    fits.close()
    k = num_classes or int(max(y.max(), int(test_labels.max())) + 1)
    metrics = classification_metrics(_logits(clf, test_features.double().numpy(), k), test_labels.long())
    return {**metrics, "C": c}


def holdout_split(labels: torch.Tensor, train_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified indices (train, test) when a data set has no training split of its own."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, train_size=train_fraction, random_state=seed, stratify=labels.numpy())
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))

"""The validation split: a stratified, seeded fraction of the training data."""
from __future__ import annotations

import numpy as np

from ._errors import DataError


def _check_fraction(val_fraction) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), exclusive, got {val_fraction!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def stratified_split(labels, val_fraction: float, seed: int):
    """Split positions ``0..len(labels)-1`` into (train, val) index arrays, stratified by label.

    The validation set has ``round(N * val_fraction)`` items (at least 1, at most N - 1),
    shared between classes in proportion to their counts (largest remainder; ties broken
    at random). Each class's members are drawn with ``numpy.random.default_rng(seed)``,
    so the same labels and seed give the same split. Both arrays are sorted and disjoint,
    and together cover every position.
    """
    _check_fraction(val_fraction)
    _check_seed(seed)
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise DataError(f"cannot split {n} item(s) into training and validation sets; need at least 2")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_val / n)
    per_class = np.floor(quota).astype(np.int64)
    leftover = n_val - int(per_class.sum())
    order = np.lexsort((rng.random(len(classes)), -(quota - per_class)))
    per_class[order[:leftover]] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)]
    val = np.sort(np.concatenate(val)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val, assume_unique=True)
    return train, val

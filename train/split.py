"""The validation split, held out from the training data and stratified by label.

On a small set a random split can leave a rare label out of validation entirely, and
early stopping then never sees it. So each label gets its share of validation rows
(largest remainder), and every label with at least two rows gets at least one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from train.errors import TrainError


def validation_size(n: int, fraction: float, size: int | None) -> int:
    want = size if size is not None else max(1, round(n * fraction))
    if want >= n:
        raise TrainError(f"the validation set ({want} rows) must be smaller than the data ({n} rows)")
    return want


def stratified_split(
    labels: Sequence[str | None], *, fraction: float = 0.1, size: int | None = None, seed: int = 42
) -> tuple[list[int], list[int]]:
    """Row indices (train, validation), both sorted. Rows without a label form their own stratum."""
    n = len(labels)
    want = validation_size(n, fraction, size)
    rng = np.random.default_rng(seed)
    strata: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        strata.setdefault(label, []).append(i)
    keys = list(strata)
    # Largest remainder: floor of each label's share, then the leftover rows to the largest fractions.
    shares = np.array([want * len(strata[k]) / n for k in keys])
    take = np.floor(shares).astype(int)
    for j in np.argsort(-(shares - take), kind="stable")[: want - take.sum()]:
        take[j] += 1
    sizes = np.array([len(strata[k]) for k in keys])
    take = np.minimum(take, sizes - 1)  # a label never leaves training entirely
    if (sizes >= 2).sum() <= want:  # room for every label: each one with two rows or more gets one
        take = np.where(sizes >= 2, np.maximum(take, 1), take)
        while take.sum() > want:  # pay for that from the best-served labels
            take[np.argmax(take)] -= 1
    val: list[int] = []
    for j, k in enumerate(keys):
        val += rng.permutation(strata[k])[: take[j]].tolist()
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], sorted(val)

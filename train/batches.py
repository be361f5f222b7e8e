"""Length-grouped micro-batches: no compute spent on padding, and a seeded, reproducible order.

Rows are shuffled, cut into mega-batches (windows of `factor` micro-batches), sorted by
length inside each window and chunked, so each micro-batch holds rows of similar length;
the micro-batches are then shuffled again so that optimizer steps do not walk from
short to long. This is what HF's LengthGroupedSampler does, without its sampler plumbing.
Packing would save a little more but needs attention masks that stop at row borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from train.tokenize import IGNORE, Encoded


def length_grouped(lengths: Sequence[int], micro_batch_size: int, *, seed: int, epoch: int, factor: int = 50) -> list[list[int]]:
    """Micro-batches of row indices for one epoch; the same (seed, epoch) gives the same batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = micro_batch_size * factor
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        mega = sorted(order[start : start + window].tolist(), key=lambda i: -lengths[i])  # stable: ties keep the shuffle
        batches += [mega[k : k + micro_batch_size] for k in range(0, len(mega), micro_batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def by_length(lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Fixed micro-batches for evaluation: sorted by length, no randomness."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k : k + micro_batch_size] for k in range(0, len(order), micro_batch_size)]


def collate(rows: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        n = len(row.input_ids)
        ids[k, :n] = torch.tensor(row.input_ids)
        labels[k, :n] = torch.tensor(row.labels)
        mask[k, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

"""Duplicate clusters: connect matching pairs, keep one row per cluster by a policy.

Matching is transitive here (A~B and B~C put A, B and C in one cluster), as in
every MinHash dedup pipeline: the alternative leaves chains of near-copies in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

KeepPolicy = Literal["first", "longest", "score"]
KEEP_POLICIES = ("first", "longest", "score")


@dataclass(frozen=True)
class Clusters:
    """`label[i]` is row i's cluster; `keeper[i]` is the row kept for that cluster (i itself if kept)."""

    label: np.ndarray
    keeper: np.ndarray

    @property
    def dropped(self) -> np.ndarray:
        return np.flatnonzero(self.keeper != np.arange(len(self.keeper)))

    def sizes(self) -> np.ndarray:
        """Per row, the size of its cluster (1 for a row with no duplicate)."""
        return np.bincount(self.label)[self.label]


def cluster(n: int, pairs: np.ndarray, rank: np.ndarray) -> Clusters:
    """Connected components of the pair graph; in each, the row with the lowest `rank` is kept.

    `pairs` is an (k, 2) integer array of row indices; `rank` a float per row (ties
    go to the earlier row).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), rank, label))  # by cluster, then rank, then position
    first_of_cluster = np.ones(n, dtype=bool)
    first_of_cluster[1:] = label[order][1:] != label[order][:-1]
    keeper_by_label = np.empty(label.max() + 1 if n else 0, dtype=np.int64)
    keeper_by_label[label[order][first_of_cluster]] = order[first_of_cluster]
    return Clusters(label=label, keeper=keeper_by_label[label])


def keep_rank(df: pl.DataFrame, policy: KeepPolicy, score_column: str | None = None) -> np.ndarray:
    """Lower is better: position (first), minus total text length (longest), minus score (score)."""
    if policy == "first":
        return np.arange(df.height, dtype=np.float64)
    if policy == "longest":
        length = df.select(
            pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
        ).to_series()
        return -length.cast(pl.Float64).to_numpy()
    if policy == "score":
        if not score_column:
            raise ValueError("keep policy 'score' needs a score column (--score-column)")
        if score_column not in df.columns:
            raise ValueError(f"score column '{score_column}' is not in the dataset (columns: {df.columns})")
        score = df[score_column].cast(pl.Float64).fill_null(float("-inf"))
        return -score.to_numpy()
    raise ValueError(f"unknown keep policy '{policy}'; choose from {', '.join(KEEP_POLICIES)}")

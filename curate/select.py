"""Selection: a diverse, high-quality subset of a given size.

Greedy maximal marginal relevance (MMR) in embedding space: each pick maximizes
`quality_weight * score - (1 - quality_weight) * similarity to the closest row already
picked`. With a score column this is score-first and diversity-aware, like Deita's
score-then-filter selection; without one it spreads picks across the embedding
space. With labels, each label gets a quota (its share of the input, or an equal
share) and is selected on its own, so the label mix is what was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from curate.dedup.semantic import embed
from curate.drops import make_drops
from curate.text import DEFAULT_FIELDS, field_text

SELECT_RANK_COLUMN = "select_rank"


@dataclass
class SelectConfig:
    """How `curate select` picks its rows."""

    size: int
    """Rows wanted; fewer are returned when fewer exist."""
    score_column: str | None = None
    """Quality score, higher is better (e.g. a judge score). None: diversity alone."""
    quality_weight: float = 0.5
    """MMR trade-off: 1 picks by score alone, 0 by diversity alone."""
    stratify: Literal["keep", "balance", "none"] = "keep"
    """With labels: keep the input's label distribution, balance labels, or ignore them."""
    fields: tuple[str, ...] = DEFAULT_FIELDS
    embedder: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"selection size must be at least 1, got {self.size}")
        if not 0 <= self.quality_weight <= 1:
            raise ValueError(f"quality_weight must be in [0, 1], got {self.quality_weight}")
        if self.stratify not in ("keep", "balance", "none"):
            raise ValueError(f"stratify must be keep, balance or none, got {self.stratify!r}")


@dataclass
class SelectResult:
    kept: pl.DataFrame
    drops: pl.DataFrame
    quotas: dict[str | None, int]


def select(df: pl.DataFrame, config: SelectConfig, *, progress: bool = True) -> SelectResult:
    if df.height == 0:
        raise ValueError("the dataset is empty: nothing to select from")
    scores = _scores(df, config.score_column)
    texts = df.select(field_text(config.fields)).to_series().to_list()
    vectors = embed(texts, config.embedder, progress=progress)
    labels = df["label"].to_list() if config.stratify != "none" and df["label"].null_count() < df.height else [None] * df.height
    quotas = _quotas(labels, min(config.size, df.height), config.stratify)
    order: list[int] = []
    nearest = np.zeros(df.height)  # similarity of each row to its closest picked row (of its label)
    for label, quota in quotas.items():
        members = np.array([i for i, lab in enumerate(labels) if lab == label], dtype=np.int64)
        picked, sims = _mmr(vectors[members], scores[members], quota, config.quality_weight)
        order.extend(members[picked].tolist())
        nearest[members] = sims
    rank = np.full(df.height, -1, dtype=np.int64)
    rank[np.array(order, dtype=np.int64)] = np.arange(len(order))
    chosen = rank >= 0
    kept = (
        df.with_columns(pl.Series(SELECT_RANK_COLUMN, rank))
        .filter(pl.Series(chosen))
        .sort(SELECT_RANK_COLUMN)
    )
    left = np.flatnonzero(~chosen)
    drops = make_drops(
        id=df["id"].gather(left),
        step="select",
        reason="not_selected",
        similarity=pl.Series(nearest[left], dtype=pl.Float64),
        detail=[
            f"label {labels[i]!r}: quota {quotas.get(labels[i], 0)} filled; "
            f"closest selected row at cosine {nearest[i]:.2f}"
            + (f"; score {scores[i]:.3g}" if config.score_column else "")
            for i in left.tolist()
        ],
    )
    return SelectResult(kept, drops, quotas)


def _scores(df: pl.DataFrame, column: str | None) -> np.ndarray:
    if column is None:
        return np.zeros(df.height)
    if column not in df.columns:
        raise ValueError(f"score column '{column}' is not in the dataset (columns: {df.columns})")
    values = df[column].cast(pl.Float64, strict=False)
    lo, hi = values.min(), values.max()
    if lo is None:
        raise ValueError(f"score column '{column}' has no numeric values")
    scaled = (values - lo) / (hi - lo) if hi > lo else values * 0 + 1.0
    return scaled.fill_null(0.0).to_numpy()


def _quotas(labels: list, size: int, stratify: str) -> dict:
    """Rows per label: proportional (largest remainder) or balanced, never more than a label has."""
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) == 1:
        return {next(iter(counts)): size}
    total = len(labels)
    if stratify == "balance":
        quotas, left, open_ = {k: 0 for k in counts}, size, dict(counts)
        while left and open_:  # hand out equal shares; labels that run out give theirs to the others
            share = max(left // len(open_), 1)
            for k in sorted(open_, key=str):
                take = min(share, open_[k], left)
                quotas[k] += take
                open_[k] -= take
                left -= take
            open_ = {k: v for k, v in open_.items() if v > 0}
        return quotas
    exact = {k: size * v / total for k, v in counts.items()}
    quotas = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - quotas[k], reverse=True)[: size - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def _mmr(vectors: np.ndarray, scores: np.ndarray, quota: int, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy MMR: indices picked in order, and every row's similarity to its closest pick."""
    n = len(vectors)
    picked: list[int] = []
    nearest = np.full(n, -1.0)
    available = np.ones(n, dtype=bool)
    for _ in range(min(quota, n)):
        gain = weight * scores - (1 - weight) * np.maximum(nearest, 0.0)
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        nearest = np.maximum(nearest, vectors @ vectors[best])
    return np.array(picked, dtype=np.int64), nearest

"""Selection: a diverse, high-quality subset whose size and label mix follow the objective.

Greedy maximal marginal relevance (MMR) in embedding space: each pick maximizes
`quality_weight * score - (1 - quality_weight) * similarity to the closest row already
picked`. With a score column this is score-first and diversity-aware, like Deita's
score-then-filter selection; without one it spreads picks across the embedding
space. With labels, each label gets a quota and is selected on its own.

The quotas follow what the model will be judged on, because a label mix that does
not match the test set costs points (a balanced pick for an imbalanced test set made
an adapter over-predict its small classes, issue 14). `stratify="auto"` balances the
labels when the metric is macro-F1 or the test set's labels are balanced, and
otherwise keeps the pool's proportions with a cap on dominant labels. The size
defaults to what the data supports: the knee of a learning curve when one was
measured, else every row when the set is small; throwing clean rows away needs a
measurement that says they do not help.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate.embeddings import embed
from curate.drops import make_drops
from curate.errors import InputError
from curate.text import DEFAULT_FIELDS, field_text

SELECT_RANK_COLUMN = "select_rank"
STRATIFY_MODES = ("auto", "keep", "balance", "none")


@dataclass
class SelectConfig:
    """How `curate select` picks its rows."""

    size: int | Literal["auto"]
    """Rows wanted (fewer are returned when fewer exist), or "auto": the curve's knee, else all
    rows up to `auto_max`."""
    score_column: str | None = None
    """Quality score, higher is better (e.g. a judge score). None: diversity alone."""
    quality_weight: float = 0.5
    """MMR trade-off: 1 picks by score alone, 0 by diversity alone."""
    stratify: Literal["auto", "keep", "balance", "none"] = "auto"
    """With labels: keep the input's label distribution (capped by `max_class_share`), balance
    labels, ignore them, or "auto": choose from `metric` and `test_labels`."""
    metric: str | None = None
    """The objective's metric. macro_f1 weighs every label alike, so auto balances; any other
    metric (accuracy) weighs labels by frequency, so auto keeps the mix. None: not known."""
    test_labels: dict[str, int] | None = None
    """Label counts of the test set. A balanced test set makes auto balance: a model trained on
    the pool's skew would over-predict its big labels there. None: not known."""
    balanced_ratio: float = 1.5
    """The test set counts as balanced when its largest label is at most this many times its smallest."""
    max_class_share: float | None = 0.5
    """keep: no label gets more than this share of the selection; its excess goes to the other
    labels in proportion to their size (never more than a label has). A label keeps more only
    when the others run out. None: pure proportions."""
    knee: int | Literal["all"] | None = None
    """size auto: the knee of a learning curve (`train curve`), in rows, or "all". None: no curve."""
    auto_max: int = 1000
    """size auto without a curve: every row when there are at most this many, else this many."""
    fields: tuple[str, ...] | None = None
    """Text embedded for diversity. None: the prompt turns (system, user) when every labelled row's
    reply is its label (classification: the label is what stratification handles, and check-labels
    embeds the same text, so the vectors come from the cache), else user, assistant and label."""
    embedder: str | None = None

    def __post_init__(self) -> None:
        if self.size != "auto" and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"selection size must be at least 1 or 'auto', got {self.size!r}")
        if not 0 <= self.quality_weight <= 1:
            raise ValueError(f"quality_weight must be in [0, 1], got {self.quality_weight}")
        if self.stratify not in STRATIFY_MODES:
            raise ValueError(f"stratify must be one of {', '.join(STRATIFY_MODES)}, got {self.stratify!r}")
        if self.max_class_share is not None and not 0 < self.max_class_share <= 1:
            raise ValueError(f"max_class_share must be in (0, 1], got {self.max_class_share}")
        if self.balanced_ratio < 1:
            raise ValueError(f"balanced_ratio must be at least 1, got {self.balanced_ratio}")
        if self.auto_max < 1:
            raise ValueError(f"auto_max must be at least 1, got {self.auto_max}")
        if self.knee is not None and self.knee != "all" and (not isinstance(self.knee, int) or self.knee < 1):
            raise ValueError(f"knee must be a positive number of rows or 'all', got {self.knee!r}")


@dataclass
class SelectResult:
    kept: pl.DataFrame
    drops: pl.DataFrame
    quotas: dict[str | None, int]
    mode: str
    """The stratification used: keep, balance or none."""
    reason: str
    """Why that stratification, in one sentence."""
    size_reason: str
    """Why this many rows, in one sentence."""


def read_knee(path: str | Path) -> int | Literal["all"]:
    """The knee size from a learning-curve JSON file written by `train curve` (its `knee.size`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(path, f"cannot read the learning curve: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a JSON learning curve: {exc}") from None
    knee = data.get("knee") if isinstance(data, dict) else None
    if not isinstance(knee, dict):
        raise InputError(path, "no 'knee' object: is this a file written by `train curve`?", field="knee")
    size = knee.get("size")
    if size == "all" or (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
        return size
    raise InputError(path, f"expected a positive number of rows or \"all\", got {size!r}", field="knee.size")


def choose_stratify(config: SelectConfig, labels: list) -> tuple[str, str]:
    """The stratification mode and why: what was asked, or what the objective calls for."""
    if all(label is None for label in labels):
        return "none", "the rows have no labels"
    if config.stratify != "auto":
        return config.stratify, f"asked for (--stratify {config.stratify})"
    metric = config.metric.lower().replace("-", "_") if config.metric else None
    if metric == "macro_f1":
        return "balance", "the metric is macro_f1, which weighs every label alike"
    cap = (f", no label above {config.max_class_share:.0%} of the selection"
           if config.max_class_share is not None else "")
    test = _test_balance(config)
    if test is not None and test[0]:
        return "balance", f"the test set's labels are balanced ({test[1]})"
    if metric is not None:
        why = f"the metric is {config.metric}, which weighs labels by how often they occur"
        if test is not None:
            why += f", and the test set's labels are imbalanced ({test[1]})"
        return "keep", why + f": keep the pool's label mix{cap}"
    if test is not None:
        return "keep", f"the test set's labels are imbalanced ({test[1]}): keep the pool's label mix{cap}"
    return "keep", f"no metric or test set given: keep the pool's label mix{cap}"


def _test_balance(config: SelectConfig) -> tuple[bool, str] | None:
    """Whether the test set's labels are balanced, and the numbers; None when it tells nothing."""
    counts = [n for n in (config.test_labels or {}).values() if n > 0]
    if len(counts) < 2:
        return None
    ratio = max(counts) / min(counts)
    sign = "<=" if ratio <= config.balanced_ratio else ">"
    return ratio <= config.balanced_ratio, (f"largest/smallest label {max(counts)}/{min(counts)} = {ratio:.2f} "
                                            f"{sign} {config.balanced_ratio:g}")


def choose_size(config: SelectConfig, rows: int) -> tuple[int, str]:
    """How many rows to select and why: the asked size, the curve's knee, or what the data supports."""
    if config.size != "auto":
        if config.size >= rows:
            return rows, f"asked for {config.size}; all {rows} rows" + (" there are" if config.size > rows else "")
        return config.size, f"asked for {config.size}"
    if config.knee == "all":
        return rows, f"auto: the learning curve's knee is all rows ({rows})"
    if config.knee is not None:
        if config.knee >= rows:
            return rows, f"auto: the learning curve's knee is {config.knee} rows; all {rows} rows there are"
        return config.knee, f"auto: the learning curve's knee is {config.knee} rows"
    if rows <= config.auto_max:
        return rows, f"auto: all {rows} rows that passed the earlier steps (at most --auto-max {config.auto_max})"
    return config.auto_max, (f"auto: {rows} rows is more than --auto-max {config.auto_max}, so {config.auto_max}; "
                             "a learning curve (`train curve`, then --curve) would say how many are needed")


def select(df: pl.DataFrame, config: SelectConfig, *, progress: bool = True) -> SelectResult:
    if df.height == 0:
        raise ValueError("the dataset is empty: nothing to select from")
    scores = _scores(df, config.score_column)
    size, size_reason = choose_size(config, df.height)
    mode, reason = choose_stratify(config, df["label"].to_list())
    labels = df["label"].to_list() if mode != "none" else [None] * df.height
    quotas, capped = _quotas(labels, size, mode, config.max_class_share if mode == "keep" else None)
    if capped:
        reason += f" ({', '.join(map(str, capped))} over the cap: the other labels ran out of rows)"
    texts = df.select(field_text(config.fields or embedding_fields(df))).to_series().to_list()
    vectors = embed(texts, config.embedder, progress=progress)
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
    return SelectResult(kept, drops, quotas, mode, reason, size_reason)


def embedding_fields(df: pl.DataFrame) -> tuple[str, ...]:
    """The prompt turns for classification rows (every labelled row's reply is its label), else DEFAULT_FIELDS."""
    labelled = df.filter(pl.col("label").is_not_null())
    if labelled.height == 0:
        return DEFAULT_FIELDS
    el = pl.element().struct
    reply = pl.col("messages").list.eval(pl.when(el.field("role") == "assistant").then(el.field("content")).drop_nulls()).list.last()
    same = labelled.select((reply.str.strip_chars() == pl.col("label").str.strip_chars()).fill_null(False).all()).item()
    return ("system", "user") if labelled.height == df.height and same else DEFAULT_FIELDS


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


def _quotas(labels: list, size: int, mode: str, max_share: float | None) -> tuple[dict, list]:
    """Rows per label, never more than a label has, and the labels that had to exceed the cap.

    balance: equal shares, a label that runs out gives the rest of its share to the others.
    keep: proportional (largest remainder); with `max_share`, a label's quota stops at
    `max_share * size` and the excess is shared by the others in proportion to their size.
    """
    counts = dict(Counter(labels))
    if len(counts) == 1:
        return {next(iter(counts)): size}, []
    if mode == "balance":
        quotas, left, open_ = {k: 0 for k in counts}, size, dict(counts)
        while left and open_:  # hand out equal shares; labels that run out give theirs to the others
            share = max(left // len(open_), 1)
            for k in sorted(open_, key=str):
                take = min(share, open_[k], left)
                quotas[k] += take
                open_[k] -= take
                left -= take
            open_ = {k: v for k, v in open_.items() if v > 0}
        return quotas, []
    if max_share is None:
        return _proportional(counts, size, counts), []
    cap = int(max_share * size + 1e-9)
    limits = {k: min(v, cap) for k, v in counts.items()}
    quotas = _proportional(counts, size, limits)
    short = size - sum(quotas.values())
    if short <= 0:
        return quotas, []
    # The cap cannot hold: the other labels have no rows left. The capped labels take the rest.
    extra = _proportional(counts, short, {k: counts[k] - quotas[k] for k in counts})
    return {k: quotas[k] + extra[k] for k in counts}, sorted((k for k in counts if extra[k]), key=str)


def _proportional(weights: dict, size: int, limits: dict) -> dict:
    """Split `size` in proportion to `weights`, no key above its limit (the excess flows to the others)."""
    quotas = {k: 0 for k in weights}
    free, left = {k for k in weights if limits[k] > 0}, min(size, sum(limits.values()))
    while free and left:
        total = sum(weights[k] for k in free)
        exact = {k: left * weights[k] / total for k in free}
        over = {k for k in free if exact[k] >= limits[k]}
        if over:  # these fill up; share what is left among the rest
            for k in over:
                quotas[k] = limits[k]
                left -= limits[k]
            free -= over
            continue
        floors = {k: int(x) for k, x in exact.items()}
        for k in sorted(free, key=lambda k: (-(exact[k] - floors[k]), str(k)))[: left - sum(floors.values())]:
            floors[k] += 1
        quotas.update(floors)
        break
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

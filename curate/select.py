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

import click
import numpy as np
import polars as pl

from curate.embeddings import embed
from curate.drops import make_drops
from curate.errors import InputError
from curate.step import Step, StepResult, embedder_model, embedder_option, option, unit_interval
from curate.text import DEFAULT_FIELDS, field_text, parse_fields

SELECT_RANK_COLUMN = "select_rank"
STRATIFY_MODES = ("auto", "keep", "balance", "none")


class SelectSize(click.ParamType):
    """A number of rows or `auto` (a click type, so recipes are checked against it before a run)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            try:
                size = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is neither a number of rows nor 'auto'", param, ctx)
        if size < 1:
            self.fail(f"selection size must be at least 1, got {size}", param, ctx)
        return size


def _fields_or_auto(value: str) -> tuple[str, ...] | None:
    return None if value.strip() == "auto" else parse_fields(value)


@dataclass
class SelectConfig:
    """How `curate select` picks its rows."""

    size: int | Literal["auto"] = option(
        help="Rows to select (fewer when fewer qualify), or auto: the knee of --curve, else every row up to --auto-max.",
        short="-n", type=SelectSize(), metavar="N|auto", required=True)
    """Rows wanted (fewer are returned when fewer exist), or "auto": the curve's knee, else all
    rows up to `auto_max`."""
    score_column: str | None = option(None, "Quality score to favour (higher is better), e.g. a judge score.")
    """Quality score, higher is better (e.g. a judge score). None: diversity alone."""
    quality_weight: float = option(0.5, "1: by score alone; 0: by diversity alone.")
    """MMR trade-off: 1 picks by score alone, 0 by diversity alone."""
    stratify: Literal["auto", "keep", "balance", "none"] = option(
        "auto", "With labels: keep the label mix (capped by --max-class-share), balance it, ignore labels, or auto: "
        "balance for macro_f1 or a balanced --test, else keep.", type=click.Choice(STRATIFY_MODES))
    """With labels: keep the input's label distribution (capped by `max_class_share`), balance
    labels, ignore them, or "auto": choose from `metric` and `test_labels`."""
    metric: str | None = option(None, "The objective's metric (accuracy, macro_f1, ...): macro_f1 makes auto balance "
                                "the labels, any other keeps their mix.")
    """The objective's metric. macro_f1 weighs every label alike, so auto balances; any other
    metric (accuracy) weighs labels by frequency, so auto keeps the mix. None: not known."""
    test: Path | None = option(None, "The held-out test set (any readable dataset); auto balances labels when its "
                               "labels are balanced.", dataset=True)
    """The test set whose label counts become `test_labels` (read by the step's command)."""
    test_labels: dict[str, int] | None = None
    """Label counts of the test set. A balanced test set makes auto balance: a model trained on
    the pool's skew would over-predict its big labels there. None: not known."""
    balanced_ratio: float = 1.5
    """The test set counts as balanced when its largest label is at most this many times its smallest."""
    max_class_share: float | None = option(0.5, "keep: no label above this share of the selection (1: no cap); the "
                                           "excess goes to the other labels.", off=1.0, callback=unit_interval)
    """keep: no label gets more than this share of the selection; its excess goes to the other
    labels in proportion to their size (never more than a label has). A label keeps more only
    when the others run out. None: pure proportions."""
    curve: Path | None = option(None, "size auto: a learning curve from `train curve`; its knee is the size.",
                                dataset=True)
    """A learning curve (`train curve`'s curve.json) whose knee becomes `knee` when size is auto."""
    knee: int | Literal["all"] | None = None
    """size auto: the knee of a learning curve (`train curve`), in rows, or "all". None: no curve."""
    auto_max: int = option(1000, "size auto without --curve: every row when there are at most this many, else "
                           "this many.", type=click.IntRange(min=1))
    """size auto without a curve: every row when there are at most this many, else this many."""
    fields: tuple[str, ...] | None = option(
        None, "Text embedded for diversity: comma-separated system/user/assistant/label, or auto (the prompt turns "
        "for classification rows, as check-labels embeds them; else user,assistant,label).",
        parse=_fields_or_auto, cli_default="auto")
    """Text embedded for diversity. None: the prompt turns (system, user) when every labelled row's
    reply is its label (classification: the label is what stratification handles, and check-labels
    embeds the same text, so the vectors come from the cache), else user, assistant and label."""
    embedder: str | None = embedder_option()

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


class Select(Step):
    """Pick a diverse, high-quality subset of SIZE rows, stratified the way the objective asks.

    Rows come out in selection order (column select_rank); the rest go to the
    drops table with reason not_selected and their distance to the selection.
    The label mix and the size chosen, and why, are printed and go to the manifest
    (stratify_mode, stratify_reason, size_chosen, size_reason).

    \b
    Example:
      curate select deduped.parquet --size auto --metric accuracy --test test.jsonl -o selected.parquet
      curate select scored.parquet --size 500 --score-column judge_score -o selected.parquet
    """

    name = "select"
    Config = SelectConfig

    def models(self) -> list[dict]:
        return embedder_model(self.config.embedder)

    def prepare(self, inputs) -> None:
        if self.config.test is not None:
            labels = inputs.records(self.config.test)["label"].drop_nulls()
            self.config.test_labels = dict(labels.value_counts().iter_rows()) if labels.len() else None
        if self.config.curve is not None and self.config.size == "auto":
            self.config.knee = read_knee(inputs.file(self.config.curve))

    def run(self, records: pl.DataFrame) -> StepResult:
        return select(records, self.config)


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


def select(df: pl.DataFrame, config: SelectConfig, *, progress: bool = True) -> StepResult:
    """The selection; its parameters say the stratification and the size chosen, and why (the
    label quotas are in `parameters["quotas"]`)."""
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
    fields = config.fields or embedding_fields(df)
    return StepResult(kept, drops, parameters={
        "fields": list(fields), "stratify_mode": mode, "stratify_reason": reason,
        "size_chosen": kept.height, "size_reason": size_reason, "quotas": {str(k): v for k, v in quotas.items()}},
        messages=[f"stratify: {mode} - {reason}", f"size: {kept.height} - {size_reason}"])


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

"""Label and score rules: only the allowed labels, and every score column at or above its minimum."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from curate.rules import Batch, Outcome, Rule, as_tuple, csv, split_pair
from curate.step import option


class AllowedLabels(Rule):
    """A label outside the task's label set (or none, when labels are required)."""

    reasons = {"label_not_allowed": "the label is not one of the allowed labels (or is missing while labels are required)"}
    order = 30

    @dataclass
    class Options:
        allowed_labels: tuple[str, ...] | None = option(None, "Comma-separated labels to keep; unlabelled rows are "
                                                        "dropped too. [default: any]", type=str, parse=csv,
                                                        flag="--labels", renamed_from=("--allowed-labels",))
        """Keep only rows labelled with one of these; a missing label is dropped too. None: any label. On the
        command line `--labels`, the label set as `curate score` and `train eval` take it."""

    def enabled(self) -> bool:
        return self.config.allowed_labels is not None

    def validate(self) -> None:
        self.config.allowed_labels = as_tuple(self.config.allowed_labels)
        if self.config.allowed_labels is not None and not self.config.allowed_labels:
            raise ValueError("allowed_labels is empty: give at least one label, or None to allow any")

    def check(self, batch: Batch) -> Outcome:
        allowed = self.config.allowed_labels
        label = batch.df["label"]
        failed = label.is_null() | ~label.is_in(list(allowed))
        shown = ", ".join(allowed)
        detail = pl.select(
            pl.when(label.is_null()).then(pl.lit(f"no label (allowed: {shown})"))
            .otherwise(pl.format("label '{}' not in allowed: {}", label, pl.lit(shown)))
        ).to_series()
        return Outcome([("label_not_allowed", failed, detail)])


def _min_scores(pairs: tuple[str, ...]) -> dict[str, float]:
    scores = {}
    for pair in pairs:
        column, minimum = split_pair(pair, "COLUMN=MIN")
        try:
            scores[column] = float(minimum)
        except ValueError:
            raise ValueError(f"{minimum!r} is not a number") from None
    return scores


class MinScores(Rule):
    """A score column (a judge's, a classifier's) below its minimum, or missing for the row."""

    reasons = {"low_score:<column>": "the score column is below its minimum, or missing for this row"}
    order = 40

    @dataclass
    class Options:
        min_scores: dict[str, float] = option(
            help="Drop rows with COLUMN below MIN or missing (repeatable), e.g. judge_score=3.", default_factory=dict,
            flag="--min-score", multiple=True, metavar="COLUMN=MIN", parse=_min_scores)
        """Numeric column -> minimum value kept, e.g. {"judge_score": 3}; rows below it or without a
        value are dropped. A column missing from the dataset is an error."""

    def enabled(self) -> bool:
        return bool(self.config.min_scores)

    def validate(self) -> None:
        self.config.min_scores = dict(self.config.min_scores)
        for column, minimum in self.config.min_scores.items():
            if not isinstance(minimum, (int, float)) or isinstance(minimum, bool) or not math.isfinite(minimum):
                raise ValueError(f"min_scores['{column}'] must be a finite number, got {minimum!r}")

    def prepare(self, df: pl.DataFrame) -> None:
        for column in self.config.min_scores:
            if column not in df.columns:
                raise ValueError(f"min_scores: score column '{column}' is not in the dataset "
                                 f"(columns: {', '.join(df.columns)})")
            if not df.schema[column].is_numeric():
                raise ValueError(f"min_scores: score column '{column}' is {df.schema[column]}, not numeric")

    def codes(self) -> list[str]:
        return [f"low_score:{c}" for c in self.config.min_scores]

    def check(self, batch: Batch) -> Outcome:
        out = Outcome()
        for column, minimum in self.config.min_scores.items():
            value = batch.df[column].cast(pl.Float64)
            failed = value.is_null() | value.is_nan() | (value < minimum)
            detail = pl.select(
                pl.when(value.is_null()).then(pl.lit(f"no {column} value (min {minimum:g})"))
                .otherwise(pl.format("{} {} < min {}", pl.lit(column), batch.df[column], pl.lit(f"{minimum:g}")))
            ).to_series()
            out.failures.append((f"low_score:{column}", failed, detail))
        return out


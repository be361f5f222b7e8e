"""Row conditions written in SQL (`label <> 'spam' AND judge_score >= 3`), evaluated by polars.

Options that pick rows by a condition (`review push --where`, `curate filter --where` and
`--rule`, `check-labels --trusted`) evaluate it here, so that a condition reads the same
everywhere and a bad one gets the same explanation. NULL counts as false, as in a SQL WHERE
clause. Besides the dataset's columns a condition can name `origin` (`synthetic` or `real`,
as in the Argilla metadata) when the dataset has no such column.
"""

from __future__ import annotations

import polars as pl


SYNTH_SOURCE_PREFIX = "synth"
FLAG_COLUMNS = ("label_issue", "label_conflict")  # boolean columns curate steps set on rows they keep but doubt


class ConditionError(ValueError):
    """A condition that does not evaluate on the dataset, or is not true or false per row."""


def is_synthetic() -> pl.Expr:
    """Rows that `synth generate` made: source 'synth:<task>' or a `synth` key in meta."""
    from_source = pl.col("source").fill_null("").str.starts_with(SYNTH_SOURCE_PREFIX)
    from_meta = pl.col("meta").fill_null("{}").str.json_path_match("$.synth").is_not_null()
    return from_source | from_meta


def is_flagged(df: pl.DataFrame) -> pl.Expr:
    """Rows a curate step kept but doubts: check-labels' `label_issue`, dedup's `label_conflict` (NULL: not flagged)."""
    flagged = pl.repeat(False, pl.len())  # one value per row even when no flag column exists
    for column in FLAG_COLUMNS:
        if column in df.columns:
            flagged = flagged | pl.col(column).cast(pl.Boolean).fill_null(False)
    return flagged


def with_condition_columns(df: pl.DataFrame, condition: str) -> pl.DataFrame:
    """`df` plus the columns `condition` names that it lacks: `origin` (from source and meta)."""
    if "origin" not in condition or "origin" in df.columns or not {"source", "meta"} <= set(df.columns):
        return df
    return df.with_columns(pl.when(is_synthetic()).then(pl.lit("synthetic")).otherwise(pl.lit("real")).alias("origin"))


def condition_mask(df: pl.DataFrame, condition: str) -> pl.Series:
    """True where `condition` (polars SQL) holds for the row; NULL is false."""
    df = with_condition_columns(df, condition)
    try:
        mask = df.select(pl.sql_expr(condition).alias("mask")).to_series()
    except Exception as exc:  # polars raises several kinds for a bad expression or column
        raise ConditionError(f"cannot be evaluated on this dataset: {str(exc).splitlines()[0]}") from None
    if mask.dtype != pl.Boolean:
        raise ConditionError(f"must be a condition (true or false per row), not {mask.dtype}")
    return mask.fill_null(False)

"""Row conditions written in SQL (`label <> 'spam' AND judge_score >= 3`), evaluated by polars.

Options that pick rows by a condition (`review push --where`, `check-labels --trusted`)
evaluate it here, so that a condition reads the same everywhere and a bad one gets the
same explanation. NULL counts as false, as in a SQL WHERE clause.
"""

from __future__ import annotations

import polars as pl


class ConditionError(ValueError):
    """A condition that does not evaluate on the dataset, or is not true or false per row."""


def condition_mask(df: pl.DataFrame, condition: str) -> pl.Series:
    """True where `condition` (polars SQL) holds for the row; NULL is false."""
    try:
        mask = df.select(pl.sql_expr(condition).alias("mask")).to_series()
    except Exception as exc:  # polars raises several kinds for a bad expression or column
        raise ConditionError(f"cannot be evaluated on this dataset: {str(exc).splitlines()[0]}") from None
    if mask.dtype != pl.Boolean:
        raise ConditionError(f"must be a condition (true or false per row), not {mask.dtype}")
    return mask.fill_null(False)

"""Filter rules: one heuristic family per class, its reason codes, thresholds and a vectorized check.

A rule declares the reason codes it can give (`reasons`: code -> one line for the report),
where it runs in the check order (`order`: cheap structural checks first, model-based
measures last, and those with `survivors_only` only on the rows still standing), and its
options as an `Options` dataclass whose fields (`curate.step.option`) become `curate filter`
flags, recipe keys and manifest parameters; a threshold of None turns its check off. `check`
gets a `Batch` and returns (code, failed, detail) per reason over the batch's rows, plus the
measures kept rows gain. `curate.filters` assembles the rules into `FilterConfig` and
`filter_records`; plugins add rules through the `smallset.rules` entry-point group.
datatrove's gopher filters are the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import polars as pl

Failure = tuple[str, pl.Series, pl.Series]
"""(reason code, failed per row, detail per row)."""


@dataclass
class Outcome:
    """What one rule found in a batch: failures in check order and the measured columns."""

    failures: list[Failure] = field(default_factory=list)
    measures: dict[str, pl.Series] = field(default_factory=dict)


class Batch:
    """The rows a rule checks, with the per-turn view several rules share (computed once)."""

    def __init__(self, df: pl.DataFrame) -> None:
        self.df = df
        self.n = df.height

    @cached_property
    def turns(self) -> pl.DataFrame:
        """One row per turn: row (index of the record), role, content, nth (1-based among the record's
        turns of that role) and of_role (how many turns of that role the record has)."""
        return (
            self.df.select("messages")
            .with_row_index("row")
            .explode("messages")
            .unnest("messages")
            .filter(pl.col("role").is_not_null())
            .with_columns(
                nth=pl.int_range(1, pl.len() + 1).over("row", "role"),
                of_role=pl.len().over("row", "role"),
            )
        )

    @cached_property
    def assistant(self) -> pl.DataFrame:
        return self.turns.filter(pl.col("role") == "assistant")

    def first_per_row(self, turns: pl.DataFrame, failed: pl.Expr, detail: pl.Expr) -> tuple[pl.Series, pl.Series]:
        """Per record: does any of its turns fail, and the detail of the first that does."""
        hits = turns.filter(failed).group_by("row", maintain_order=True).agg(detail.first().alias("detail"))
        index = hits["row"].to_numpy()
        mask = np.zeros(self.n, dtype=bool)
        mask[index] = True
        details = pl.Series("detail", [None] * self.n, dtype=pl.String)
        if len(index):
            details = details.scatter(index, hits["detail"])
        return pl.Series("failed", mask), details


WHERE = pl.when(pl.col("of_role") > 1).then(pl.format(" (assistant turn {})", pl.col("nth"))).otherwise(pl.lit(""))
"""For per-turn details: which assistant turn, when a record has several."""


class Rule:
    """One heuristic family. Subclasses set `reasons`, `order` and `Options`, and implement `enabled` and `check`.

    A rule reads its thresholds from the whole filter configuration (`config`), which holds the
    fields of every rule's `Options`. `validate` raises ValueError for a bad threshold (the
    message names the field); `codes` lists the concrete codes this configuration can give
    (parameterized rules: `low_score:judge_score`); `measures` names the columns kept rows gain.
    """

    reasons: ClassVar[dict[str, str]]
    order: ClassVar[int]
    Options: ClassVar[type]
    survivors_only: ClassVar[bool] = False
    """Run only on rows no earlier rule dropped (for expensive measures: tokens, language)."""
    measures: ClassVar[dict[str, pl.DataType]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config

    def enabled(self) -> bool:
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ValueError for a bad threshold."""

    def prepare(self, df: pl.DataFrame) -> None:
        """Check the dataset itself before any rule runs (a score column that is missing)."""

    def codes(self) -> list[str]:
        return list(self.reasons)

    def check(self, batch: Batch) -> Outcome:
        raise NotImplementedError


def int_at_least(name: str, value: Any, low: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def share(name: str, value: Any) -> None:
    """A ratio threshold in [0, 1] (None: off)."""
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def as_tuple(value: Any) -> tuple | None:
    """A string or a sequence as a tuple (None stays None)."""
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def csv(value: str) -> tuple[str, ...] | None:
    """The command line's "en,fr" as ("en", "fr")."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) or None


def split_pair(value: str, what: str) -> tuple[str, str]:
    """NAME=VALUE -> (NAME, VALUE), both stripped and non-empty."""
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"expected {what}, got {value!r}")
    return name.strip(), rest.strip()

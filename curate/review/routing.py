"""Routing: which rows of a dataset go to people for review.

Review time is the scarce resource, so `push` can send only part of a dataset:

* `all`: every row;
* `borderline`: rows whose score (`--score-column`, default `judge_score`) lies
  in a band (`--band 2.5:3.5`, both ends included), where an automatic judge is
  least trustworthy;
* `audit`: a seeded random fraction of the rows (`--fraction 0.1 --seed 0`), to
  measure how good the automatic steps are. The sample ranks rows by a hash of
  (seed, row id), so it is the same on every run and a grown dataset keeps the
  rows it had already picked, as far as the fraction allows;
* `synthetic`: rows made by `synth generate` (source `synth:...` or `meta.synth`);
* `suspects`: the rows curation could not vouch for: synthetic rows and rows a step
  flagged for people (`label_issue` from check-labels, `label_conflict` from dedup).
  A recipe's review stage uses it when `review.push` names no route, so that a
  suspected label error is read by a person instead of trained on unseen;
* `filter`: rows for which `--where` holds.

`--where EXPR` can narrow any policy. EXPR is a SQL expression over the
dataset's columns, evaluated by polars (`pl.sql_expr`): for example
`judge_score < 3 AND source = 'tickets'`, `label IN ('billing', 'account')`,
`dedup_cluster_size > 1`, `origin = 'synthetic'` (`origin` is `synthetic` or
`real`, as in the Argilla metadata).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import polars as pl

from curate.conditions import ConditionError, condition_mask, is_flagged, is_synthetic
from curate.errors import SmallsetError

POLICIES = ("all", "borderline", "audit", "synthetic", "suspects", "filter")


class RoutingError(SmallsetError):
    """A routing policy that cannot be applied to this dataset."""


@dataclass(frozen=True)
class Route:
    """A routing policy and its parameters."""

    policy: str = "all"
    score_column: str = "judge_score"
    band: tuple[float, float] = (2.5, 3.5)
    fraction: float = 0.1
    seed: int = 0
    where: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise RoutingError(f"unknown routing policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.policy == "filter" and not self.where:
            raise RoutingError("the 'filter' routing policy needs --where EXPR")
        if not 0 < self.fraction <= 1:
            raise RoutingError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.band[0] > self.band[1]:
            raise RoutingError(f"--band LOW:HIGH needs LOW <= HIGH, got {self.band[0]}:{self.band[1]}")

    def describe(self) -> dict:
        out: dict = {"policy": self.policy}
        if self.policy == "borderline":
            out.update(score_column=self.score_column, band=list(self.band))
        if self.policy == "audit":
            out.update(fraction=self.fraction, seed=self.seed)
        if self.where:
            out["where"] = self.where
        return out


def parse_band(text: str) -> tuple[float, float]:
    """'2.5:3.5' -> (2.5, 3.5)."""
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise RoutingError(f"--band must look like LOW:HIGH (e.g. 2.5:3.5), got {text!r}") from None
    return low, high


def is_suspect(df: pl.DataFrame) -> pl.Expr:
    """Synthetic rows, and rows with a curation flag (FLAG_COLUMNS) set."""
    return is_synthetic() | is_flagged(df)


def route(df: pl.DataFrame, policy: Route) -> pl.DataFrame:
    """The rows to review, in dataset order."""
    if policy.policy == "borderline":
        column = policy.score_column
        if column not in df.columns:
            raise RoutingError(
                f"borderline routing reads the score column {column!r}, which this dataset lacks "
                f"(columns: {', '.join(df.columns)}); pass --score-column"
            )
        if not df.schema[column].is_numeric():
            raise RoutingError(f"the score column {column!r} is not numeric ({df.schema[column]})")
        low, high = policy.band
        df = df.filter(pl.col(column).is_between(low, high, closed="both"))
    elif policy.policy == "audit":
        df = _audit_sample(df, policy.fraction, policy.seed)
    elif policy.policy == "synthetic":
        df = df.filter(is_synthetic())
    elif policy.policy == "suspects":
        df = df.filter(is_suspect(df))
    if policy.where:
        df = df.filter(_where(df, policy.where))
    return df


def _where(df: pl.DataFrame, text: str) -> pl.Series:
    try:  # `origin`, the metadata value the UI filters on, is usable here too (curate.conditions)
        return condition_mask(df, text)
    except ConditionError as exc:
        raise RoutingError(f"--where {text!r} {exc}") from None


def _audit_sample(df: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """ceil(fraction x rows) rows with the smallest hash of (seed, id): seeded and stable."""
    if df.height == 0:
        return df
    keep = math.ceil(fraction * df.height)
    ranks = [hashlib.blake2b(f"{seed}\x1f{rid}".encode(), digest_size=8).digest() for rid in df["id"].to_list()]
    order = sorted(range(df.height), key=lambda i: (ranks[i], i))[:keep]
    return df[sorted(order)]

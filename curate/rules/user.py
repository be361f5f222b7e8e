"""Your own rules: a polars SQL expression or a Python callable that says which rows to keep."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from curate.conditions import with_condition_columns
from curate.rules import Batch, Outcome, Rule, split_pair
from curate.step import option


@dataclass
class UserRule:
    """A rule of your own: rows for which it is not TRUE are dropped with reason `rule:<name>`.

    Exactly one of:

    * ``expr``: a polars SQL boolean expression over the record columns, e.g.
      ``"label <> 'spam' AND judge_score >= 3"`` (`polars.sql_expr`); NULL counts as not true;
    * ``callable``: ``"package.module:function"``, called with the whole DataFrame and
      returning a boolean Series (or list/array), True = keep, one value per row.
    """

    name: str
    expr: str | None = None
    callable: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[\w.\-]+", self.name):
            raise ValueError(f"rule name must be a non-empty word (letters, digits, _ . -), got {self.name!r}")
        if (self.expr is None) == (self.callable is None):
            raise ValueError(f"rule '{self.name}': give exactly one of expr or callable")
        if self.expr is not None:
            try:
                pl.sql_expr(self.expr)
            except Exception as exc:
                raise ValueError(f"rule '{self.name}': invalid expression {self.expr!r}: {exc}") from None
        if self.callable is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.callable):
            raise ValueError(f"rule '{self.name}': callable must look like 'package.module:function', got {self.callable!r}")

    @property
    def code(self) -> str:
        return f"rule:{self.name}"

    def keep(self, df: pl.DataFrame) -> pl.Series:
        """The rule's verdict per row: True = keep; null counts as false."""
        if self.expr is not None:
            try:  # the columns a condition may name, `origin` among them, as `review push --where` sees them
                keep = with_condition_columns(df, self.expr).select(pl.sql_expr(self.expr).alias("keep")).to_series()
            except Exception as exc:
                raise ValueError(f"rule '{self.name}': cannot evaluate {self.expr!r}: {exc}") from None
            if keep.len() == 1 and df.height != 1:  # a constant expression
                keep = pl.Series("keep", [keep[0]] * df.height, dtype=keep.dtype)
        else:
            fn = self._load()
            try:
                value = fn(df)
            except Exception as exc:
                raise ValueError(f"rule '{self.name}': {self.callable} failed: {type(exc).__name__}: {exc}") from exc
            keep = value if isinstance(value, pl.Series) else pl.Series("keep", value)
        if keep.dtype != pl.Boolean and not (keep.dtype == pl.Null):
            raise ValueError(f"rule '{self.name}' must give booleans (True = keep), got {keep.dtype}")
        if keep.len() != df.height:
            raise ValueError(f"rule '{self.name}' gave {keep.len()} values for {df.height} rows")
        return keep.cast(pl.Boolean).fill_null(False)

    def _load(self) -> Callable[[pl.DataFrame], object]:
        module_name, _, attr = self.callable.partition(":")
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"rule '{self.name}': cannot import module '{module_name}': {exc}") from None
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ValueError(f"rule '{self.name}': '{module_name}' has no attribute '{attr}'")
        if not callable(target):
            raise ValueError(f"rule '{self.name}': {self.callable} is not callable")
        return target


def _expressions(pairs: tuple[str, ...]) -> list[UserRule]:
    return [UserRule(name, expr=expr) for name, expr in (split_pair(p, "NAME=EXPR") for p in pairs)]


def _callables(pairs: tuple[str, ...]) -> list[UserRule]:
    return [UserRule(name, callable=fn) for name, fn in (split_pair(p, "NAME=MODULE:FUNCTION") for p in pairs)]


class UserRules(Rule):
    """Your rules, in the order given, after the built-in heuristics and before the model-based measures."""

    reasons = {"rule:<name>": "a user rule (expression or callable) did not hold"}
    order = 90

    @dataclass
    class Options:
        rules: list[UserRule] = option(
            help="Keep rows where this polars SQL expression is true (repeatable), e.g. \"short=len(label) < 20\".",
            default_factory=list, flag="--rule", multiple=True, metavar="NAME=EXPR", parse=_expressions)
        """User rules (expressions or callables), checked after the built-in heuristics and before the token
        and language checks."""
        rule_callables: list[UserRule] = option(
            help="Keep rows where FUNCTION(dataframe) is True (repeatable).", default_factory=list,
            flag="--rule-callable", multiple=True, metavar="NAME=MODULE:FUNCTION", parse=_callables)
        """More user rules, from the command line's --rule-callable; checked after `rules`."""
        where: str | None = option(
            None, "Keep rows where this polars SQL expression holds, as `review push --where` picks them (`origin` is "
            "synthetic or real there too), e.g. \"review_outcome <> 'rejected'\" (dropped as rule:where).", metavar="SQL")
        """One unnamed rule (reason `rule:where`), in the syntax of `review push --where`: checked first."""

    @property
    def all(self) -> list[UserRule]:
        where = [UserRule("where", expr=self.config.where)] if self.config.where else []
        return [*where, *self.config.rules, *self.config.rule_callables]

    def enabled(self) -> bool:
        return bool(self.all)

    def validate(self) -> None:
        self.config.rules = [r if isinstance(r, UserRule) else UserRule(**r) for r in self.config.rules]
        self.config.rule_callables = [r if isinstance(r, UserRule) else UserRule(**r) for r in self.config.rule_callables]
        names = [r.name for r in self.all]
        if len(set(names)) != len(names):
            raise ValueError(f"rules: duplicate rule names in {names}")

    def codes(self) -> list[str]:
        return [r.code for r in self.all]

    def check(self, batch: Batch) -> Outcome:
        out = Outcome()
        for rule in self.all:
            keep = rule.keep(batch.df)
            detail = f"expression is not true: {rule.expr}" if rule.expr is not None else f"{rule.callable} returned false"
            out.failures.append((rule.code, ~keep, pl.Series([detail] * batch.n, dtype=pl.String)))
        return out

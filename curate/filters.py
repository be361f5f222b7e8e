"""Filters: heuristic quality rules, each with a reason code and a threshold.

Every rule looks at a record and says keep or drop; a dropped row goes to the drops
table with its reason code and the measured value against the threshold
("312 tokens > max 256"), so nothing disappears unexplained. A row failing several
rules is dropped once, for the first failing rule in check order: cheap structural
checks first, the model-based measures last, and those only on the rows still standing.

The rules live in `curate.rules`, one heuristic family per class; plugins add more through
the `smallset.rules` entry points. This module assembles them: `FilterConfig` holds every
rule's options (so `curate filter`'s flags, recipe keys and manifest parameters come from
the rules), `REASONS` and `ORDER` are the reason codes in check order, and `filter_records`
runs the enabled rules. Kept rows gain the measures that were computed: ``filter_tokens``
(int) when a token limit is set, ``filter_language`` (ISO 639-1 code) when ``languages`` is set.

The rules are vectorized with polars; 100k rows take seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from curate.drops import empty_drops, make_drops
from curate.plugins import load_all
from curate.rules import Batch, Rule
from curate.rules.language import LANGUAGE_COLUMN, identify_languages, language_codes
from curate.rules.text import repeated_ngram_ratio
from curate.rules.tokens import TOKENS_COLUMN, Tokens, count_tokens
from curate.rules.user import UserRule
from curate.step import Step, StepResult

__all__ = ["FilterConfig", "Filter", "REASONS", "ORDER", "RULES", "UserRule", "describe_reason", "filter_records",
           "count_tokens", "identify_languages", "language_codes", "repeated_ngram_ratio", "LANGUAGE_COLUMN",
           "TOKENS_COLUMN"]

RULES: tuple[type[Rule], ...] = tuple(sorted(load_all("rules").values(), key=lambda rule: rule.order))
"""Every rule, built-in and plugin, in check order."""

REASONS: dict[str, str] = {code: text for rule in RULES for code, text in rule.reasons.items()}
"""Reason code -> one-line description, in check order. Parameterized codes are listed as templates."""

ORDER = tuple(REASONS)
"""The order rules are checked in; a row is dropped for the first rule it fails."""


def describe_reason(code: str) -> str:
    """The description of a reason code, parameterized ones (`low_score:judge_score`) included."""
    if code in REASONS:
        return REASONS[code]
    prefix, _, _ = code.partition(":")
    for template, text in REASONS.items():
        if template.startswith(prefix + ":<"):
            return text
    raise KeyError(code)


def _fields() -> list[tuple[str, object, dataclasses.Field]]:
    """Every rule's option fields, for FilterConfig; two rules may not claim one name."""
    out, owner = [], {}
    for rule in RULES:
        for f in dataclasses.fields(rule.Options):
            if f.name in owner:
                raise TypeError(f"filter rules {owner[f.name].__name__} and {rule.__name__} both declare '{f.name}'")
            owner[f.name] = rule
            kwargs = {"metadata": f.metadata}
            if f.default_factory is not dataclasses.MISSING:
                kwargs["default_factory"] = f.default_factory
            else:
                kwargs["default"] = f.default
            out.append((f.name, f.type, dataclasses.field(**kwargs)))
    return out


class _FilterConfigMethods:
    def __post_init__(self) -> None:
        for rule in self.all_rules():
            rule.validate()

    def all_rules(self) -> list[Rule]:
        return [rule(self) for rule in RULES]

    def active_rules(self) -> list[Rule]:
        """The enabled rules, in check order."""
        return [rule for rule in self.all_rules() if rule.enabled()]

    @property
    def counts_tokens(self) -> bool:
        return Tokens(self).enabled()

    def reason_codes(self) -> list[str]:
        """The reason codes this configuration can produce, in check order."""
        return [code for rule in self.active_rules() for code in rule.codes()]


FilterConfig = dataclasses.make_dataclass("FilterConfig", _fields(), bases=(_FilterConfigMethods,),
                                      namespace={"__module__": __name__})
FilterConfig.__doc__ = ("Which rules `curate filter` applies, and their thresholds (one field per rule option, see "
                        "`curate.rules`). None turns a rule off.")


class Filter(Step):
    """Drop rows that fail heuristic quality rules; each drop keeps its reason and measured value.

    Rules run in a fixed order, cheapest first; a row is dropped for the first it fails.
    Kept rows gain filter_tokens (and filter_language with --languages).

    \b
    Examples:
      curate filter deduped.parquet --max-tokens 1024 --languages en --min-score judge_score=3 \\
        --rule "has_label=label IS NOT NULL" -o filtered.parquet
      curate filter reviewed.parquet --where "review_outcome <> 'rejected' AND origin = 'real'" -o kept.parquet
    """

    name = "filter"
    Config = FilterConfig
    row_local = True

    @classmethod
    def help(cls) -> str:
        order = ", ".join(code for rule in RULES for code in rule.reasons)
        return super().help().replace("the first it fails.", f"the first it fails:\n{order}.", 1)

    def models(self) -> list[dict]:
        from curate.models import resolve_llm

        return [resolve_llm(self.config.tokenizer).describe()] if self.config.counts_tokens else []

    def run(self, records: pl.DataFrame) -> StepResult:
        result = filter_records(records, self.config)
        result.counts = {}  # the drops by reason are the manifest's counts
        result.parameters = {"reason_order": self.config.reason_codes()}
        return result


def filter_records(df: pl.DataFrame, config: FilterConfig | None = None) -> StepResult:
    """Apply the enabled rules of `config` in check order; `counts` has every enabled rule's code (zero included)."""
    config = config or FilterConfig()
    active = config.active_rules()
    for rule in active:
        rule.prepare(df)
    codes = config.reason_codes()
    n = df.height
    if not n:
        empty = {col: pl.Series(col, [], dtype=t) for rule in active for col, t in rule.measures.items()}
        return StepResult(df.with_columns(**empty), empty_drops(), {code: 0 for code in codes})
    fails: list[tuple[str, pl.Series, pl.Series]] = []  # (code, failed, detail) over all rows
    measured: dict[str, pl.Series] = {}
    alive = np.ones(n, dtype=bool)
    everything = Batch(df)
    for rule in active:
        if rule.survivors_only:
            mask = alive.copy()
            outcome = rule.check(Batch(df.filter(pl.Series(mask))))
            failures = [(code, _scatter(f, mask, n, pl.Boolean).fill_null(False), _scatter(d, mask, n, pl.String))
                        for code, f, d in outcome.failures]
            measures = {col: _scatter(v, mask, n, rule.measures.get(col, v.dtype)).alias(col)
                        for col, v in outcome.measures.items()}
        else:
            outcome = rule.check(everything)
            failures, measures = outcome.failures, outcome.measures
        for code, failed, detail in failures:
            failed = failed.fill_null(False)
            fails.append((code, failed, detail))
            alive &= ~failed.to_numpy()
        measured.update(measures)
    if not fails:
        return StepResult(df.with_columns(**measured), empty_drops(), {})
    frame = pl.DataFrame({f"f{i}": f for i, (_, f, _) in enumerate(fails)} | {f"d{i}": d for i, (_, _, d) in enumerate(fails)})
    verdict = frame.select(
        reason=pl.coalesce([pl.when(pl.col(f"f{i}")).then(pl.lit(code)) for i, (code, _, _) in enumerate(fails)]),
        detail=pl.coalesce([pl.when(pl.col(f"f{i}")).then(pl.col(f"d{i}")) for i in range(len(fails))]),
    )
    dropped = verdict["reason"].is_not_null()
    kept = df.with_columns(**measured).filter(~dropped)
    drop_rows = verdict.filter(dropped)
    drops = make_drops(id=df["id"].filter(dropped), step="filter", reason=drop_rows["reason"], detail=drop_rows["detail"])
    by_reason = dict(drop_rows.group_by("reason").len().iter_rows())
    return StepResult(kept, drops, {code: by_reason.get(code, 0) for code in codes})


FilterResult = StepResult  # the name before the step contract


def _scatter(values: pl.Series, mask: np.ndarray, n: int, dtype: pl.DataType) -> pl.Series:
    """Values for the rows where `mask` is set, null elsewhere, as a full-length series."""
    out = pl.Series(values.name, [None] * n, dtype=dtype)
    index = np.flatnonzero(mask)
    return out.scatter(index, values.cast(dtype)) if len(index) else out

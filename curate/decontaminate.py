"""Decontamination: drop training rows that overlap an evaluation or held-out set.

Two checks, either enough to drop a row:

* word n-gram overlap: the share of the training row's n-grams that also occur in
  the evaluation set (8-grams by default, as in the Tulu and OLMo decontamination
  passes; GPT-3's 13-grams are too long for short instruction data);
* MinHash near-duplication: Jaccard similarity of shingle sets above the near-dedup
  threshold, found with the same MinHash LSH as `curate dedup`.

Both are measured on what is specific to a row. Counting every n-gram alike makes
templated text look like contamination: a greeting and a signature that many
legitimate rows share with the test rows ("Thank you for contacting us...") can be
most of a short row's n-grams, and most of its shingles. So by default
(``weighting="idf"``):

1. n-grams in more than ``max_df`` rows of the pool (the training plus the evaluation
   rows) are stock phrases, and their words are cut out of the text before both
   checks (an n-gram half in a signature and half in the row's own words would
   otherwise look rare);
2. each remaining n-gram weighs its rarity in the pool, ``log(N / df)`` with ``df`` the
   rows that contain it, and the overlap is the weighted share.

A test row copied into training still overlaps 100% (its n-grams are equally rare on
both sides); a row that only shares stock phrases overlaps as much as its own words do.
A row with nothing specific left (all stock phrases) is judged on its plain share, so
an exact copy is never missed. The price: a passage in more than ``max_df`` rows is a
template here, even a test row copied that often, so run dedup first (recipes do) or
raise ``max_df``. ``weighting="none"`` counts every n-gram of the whole text once, as
before weighting.

Each drop names the evaluation row it overlaps most and says how many evaluation
rows it is close to (its overlap with that one row reaches the threshold, or MinHash
finds them similar): contamination is close to one or two test rows, boilerplate to
many. The result counts `eval_rows_matched`, the distinct evaluation rows some
dropped row is close to, so the manifest says "N rows dropped, close to M test rows".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal

import click
import numpy as np
import polars as pl

from curate.dedup.near import NearDedupConfig, near_duplicate_pairs
from curate.drops import empty_drops, make_drops
from curate.step import Step, StepResult, fields_option, normalize_option, option, unit_interval
from curate.text import match_text

Weighting = Literal["idf", "none"]
WEIGHTINGS: tuple[str, ...] = ("idf", "none")


def parse_max_df(value: str | float | None) -> float | None:
    """`"10"` (rows), `"0.05"` (a share of the pool's rows) or `"none"` (no cap) -> the `max_df` value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"max_df must be a number of rows (>= 2), a share of rows below 1, or 'none'; got {value!r}") from None
    _check_max_df(number)
    return int(number) if number >= 1 else number


def _check_max_df(value: float) -> None:
    if not (0 < value < 1 or (value >= 2 and float(value).is_integer())):
        raise ValueError(
            f"max_df must be a whole number of rows >= 2 or a share of rows in (0, 1), got {value:g}: "
            "an n-gram shared by one evaluation row and one training row is what contamination looks like")


class MaxDf(click.ParamType):
    """Rows, a share of rows, or none (a click type, so recipes are checked against it before a run)."""

    name = "ROWS|SHARE|none"

    def convert(self, value, param, ctx):
        try:
            return parse_max_df(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass
class DecontaminationConfig:
    """How much overlap with the evaluation set makes a training row contaminated."""

    against: tuple[Path, ...] = option((), "Evaluation or held-out set (any readable format); repeatable.",
                                       multiple=True, required=True, dataset=True, type=click.Path(path_type=Path))
    """The evaluation sets (read by the step's command; the library function takes the rows)."""
    ngram: int = option(8, "Word n-gram length for the overlap check.")
    """Word n-gram length for the overlap check."""
    max_overlap: float = option(0.5, "Drop a row when this share of its n-grams (weighted by --weighting) occurs in "
                                "the evaluation set.", callback=unit_interval)
    """Drop when at least this share of the row's n-grams (weighted by `weighting`) occurs in the evaluation set."""
    weighting: Weighting = option("idf", "idf: stock phrases (see --max-df) are left out of both checks and every "
                                  "other n-gram weighs its rarity in the training plus evaluation rows; none: every "
                                  "n-gram of the whole text counts once.", type=click.Choice(WEIGHTINGS))
    """How an n-gram counts in the share: "idf" leaves stock phrases out (`max_df`) and weighs every
    other n-gram by its rarity in the pool (training plus evaluation rows), log(N / rows containing
    it); "none" counts every n-gram of the whole text once (the behaviour before weighting, `max_df`
    unused)."""
    max_df: float | None = option(10, "With idf: n-grams in more than this many rows (a share of all rows when below "
                                  "1, e.g. 0.05) are stock phrases (greetings, signatures); none: no stock phrases, "
                                  "idf weights alone.", type=MaxDf(), cli_default="10")
    """With idf: n-grams in more than this many pool rows (a share of the pool's rows when below 1)
    are stock phrases, left out of both checks. Contamination is one evaluation row and the few
    training rows that copy it; a phrase in more rows is a template. None: idf weights alone."""
    threshold: float = option(0.8, "MinHash check: Jaccard similarity with any evaluation row.", callback=unit_interval)
    minhash: bool = option(True, "--no-minhash: only the n-gram check.", flag="--minhash/--no-minhash")
    """The MinHash check (its threshold is a Jaccard similarity); False leaves only the n-gram check."""
    fields: tuple[str, ...] = fields_option()
    """Compared text: by default everything, so that a test prompt paired with any answer counts."""
    normalize: tuple[str, ...] = normalize_option()
    """How compared text is normalized (`curate.text.NORMALIZATIONS`), as in dedup."""
    near: NearDedupConfig | None = field(init=False)
    """The MinHash check's settings (None: off)."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 0 < self.max_overlap <= 1:
            raise ValueError(f"max_overlap must be in (0, 1], got {self.max_overlap}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.max_df is not None:
            _check_max_df(self.max_df)
        self.near = NearDedupConfig(threshold=self.threshold) if self.minhash else None


class Decontaminate(Step):
    """Drop training rows that overlap an evaluation or held-out set.

    Each drop says how many evaluation rows it is close to; the manifest counts
    eval_rows_matched, the evaluation rows some dropped row is close to.

    \b
    Example:
      curate decontaminate train.parquet --against test.jsonl -o train.clean.parquet
    """

    name = "decontaminate"
    Config = DecontaminationConfig
    evaluation: pl.DataFrame | None = None

    def prepare(self, inputs) -> None:
        self.evaluation = pl.concat([inputs.records(path) for path in self.config.against], how="diagonal_relaxed")

    def run(self, records: pl.DataFrame) -> StepResult:
        result = decontaminate(records, self.evaluation, self.config)
        matched = result.counts["eval_rows_matched"]
        result.counts = {"eval_rows_matched": matched}
        result.messages.append(f"{result.drops.height} training rows dropped, close to {matched} of "
                               f"{self.evaluation.height} evaluation rows")
        return result


DecontaminationResult = StepResult  # the name before the step contract


def _ngrams(text: str, n: int) -> list[int]:
    words = text.split()
    if len(words) < n:  # a short row is one n-gram: the whole row
        return [hash(tuple(words))] if words else []
    return [hash(tuple(words[k : k + n])) for k in range(len(words) - n + 1)]


@dataclass
class _Grams:
    """The n-grams of a list of texts, per row and flat (with each one's row)."""

    rows: list[list[int]]
    flat: np.ndarray
    row_of: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, texts: list[str], n: int, reuse: tuple[list[str], _Grams] | None = None) -> _Grams:
        """`reuse`: (texts, their n-grams); a text that is the very same object is not hashed again."""
        if reuse is None:
            rows = [_ngrams(text, n) for text in texts]
        else:
            rows = [old if text is before else _ngrams(text, n) for text, before, old in zip(texts, reuse[0], reuse[1].rows)]
        lengths = np.fromiter((len(g) for g in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return cls(rows, flat, np.repeat(np.arange(len(rows), dtype=np.int64), lengths),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def of_row(self, values: np.ndarray, row: int) -> np.ndarray:
        """The slice of a per-occurrence array (same order as `flat`) that belongs to `row`."""
        return values[self.starts[row] : self.starts[row + 1]]

    def per_row(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-occurrence array over each row."""
        return np.bincount(self.row_of, weights=values, minlength=len(self.rows))

    def postings(self) -> dict[int, list[int]]:
        """Rows behind each n-gram, in row order."""
        found: dict[int, list[int]] = {}
        for row, grams in enumerate(self.rows):
            for gram in dict.fromkeys(grams):
                found.setdefault(gram, []).append(row)
        return found


def _pool_df(train: _Grams, evaluation: _Grams) -> tuple[np.ndarray, np.ndarray]:
    """For each n-gram occurrence of the training and of the evaluation rows: how many pool rows contain it."""
    flat = np.concatenate([train.flat, evaluation.flat])
    rows = np.concatenate([train.row_of, evaluation.row_of + len(train.rows)])
    order = np.argsort(flat, kind="stable")  # rows ascend within each n-gram: they were in row order
    grams, owners = flat[order], rows[order]
    new_gram = np.ones(len(grams), dtype=bool)
    new_gram[1:] = grams[1:] != grams[:-1]
    new_row = new_gram.copy()
    new_row[1:] |= owners[1:] != owners[:-1]
    group = np.cumsum(new_gram) - 1
    df = np.empty(len(flat), dtype=np.int64)
    df[order] = np.bincount(group, weights=new_row).astype(np.int64)[group]
    return df[: len(train.flat)], df[len(train.flat) :]


def _cap(config: DecontaminationConfig, pool_rows: int) -> float:
    """Rows above which an n-gram is a stock phrase (inf: no cap)."""
    if config.weighting == "none" or config.max_df is None:
        return float("inf")
    return config.max_df * pool_rows if config.max_df < 1 else float(config.max_df)


def _without_stock_phrases(text: str, stock: list[bool], n: int) -> str:
    """`text` less the words inside its stock-phrase n-grams (`stock`: one flag per n-gram of `_ngrams`)."""
    words = text.split()
    covered = [False] * len(words)
    for k, flag in enumerate(stock):
        if flag:
            covered[k : k + n] = [True] * len(covered[k : k + n])  # a short row is one n-gram: every word
    return " ".join(w for w, c in zip(words, covered) if not c)


def _strip_stock(texts: list[str], grams: _Grams, stock: np.ndarray, n: int) -> list[str]:
    """Each text without its stock phrases; a text that has none is returned as the same object."""
    out = list(texts)
    for row in np.flatnonzero(grams.per_row(stock.astype(np.float64)) > 0).tolist():
        out[row] = _without_stock_phrases(texts[row], grams.of_row(stock, row).tolist(), n)
    return out


def _close_rows(per_eval: dict[int, float], similar: dict[int, float], threshold: float) -> list[int]:
    return sorted({e for e, share in per_eval.items() if share >= threshold} | set(similar))


def _closeness(rows: list[int]) -> str:
    if not rows:
        return "close to no single evaluation row (its overlap is spread over several)"
    shown = ", ".join(str(e + 1) for e in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return f"close to {len(rows)} evaluation row{'s' if len(rows) != 1 else ''} ({shown})"


def decontaminate(train: pl.DataFrame, evaluation: pl.DataFrame, config: DecontaminationConfig | None = None) -> StepResult:
    """Drop rows of `train` that overlap `evaluation`."""
    config = config or DecontaminationConfig()
    if train.height == 0:
        raise ValueError("the training set is empty")
    if evaluation.height == 0:
        raise ValueError("the evaluation set is empty")
    whole_train = train.select(match_text(config.fields, config.normalize)).to_series().to_list()
    whole_eval = evaluation.select(match_text(config.fields, config.normalize)).to_series().to_list()
    eval_ids = evaluation["id"].to_list()
    n, n_pool = config.ngram, train.height + evaluation.height
    cap = _cap(config, n_pool)

    # The whole texts: what `none` compares, and the fallback for a row with nothing specific.
    train_all, eval_all = _Grams.of(whole_train, n), _Grams.of(whole_eval, n)
    train_texts, eval_texts, train_own, eval_own = whole_train, whole_eval, train_all, eval_all
    if np.isfinite(cap):
        train_stock, eval_stock = (df > cap for df in _pool_df(train_all, eval_all))
        train_texts = _strip_stock(whole_train, train_all, train_stock, n)
        eval_texts = _strip_stock(whole_eval, eval_all, eval_stock, n)
        train_own = _Grams.of(train_texts, n, reuse=(whole_train, train_all))
        eval_own = _Grams.of(eval_texts, n, reuse=(whole_eval, eval_all))
    if config.weighting == "none":
        weight = np.ones(len(train_own.flat))
    else:
        own_df, _ = _pool_df(train_own, eval_own)
        weight = np.where(own_df > cap, 0.0, np.log(n_pool / own_df))

    in_eval = np.isin(train_own.flat, eval_own.flat)
    total = train_own.per_row(weight)
    specific = total > 0  # else: nothing specific left, the plain share of the whole text decides
    share = np.divide(train_own.per_row(weight * in_eval), total, out=np.zeros(train.height), where=specific)
    if not specific.all():
        count = train_all.per_row(np.ones(len(train_all.flat)))
        plain = train_all.per_row(np.isin(train_all.flat, eval_all.flat).astype(np.float64))
        share = np.where(specific, share, np.divide(plain, count, out=np.zeros(train.height), where=count > 0))
    own_postings, all_postings = eval_own.postings(), None

    def per_eval_share(row: int) -> dict[int, float]:
        """Weighted share of the row's n-grams in each evaluation row, in order of first appearance."""
        nonlocal all_postings
        if specific[row]:
            grams, w, postings = train_own.rows[row], train_own.of_row(weight, row), own_postings
        else:
            all_postings = all_postings if all_postings is not None else eval_all.postings()
            grams, w, postings = train_all.rows[row], np.ones(len(train_all.rows[row])), all_postings
        acc: dict[int, float] = {}
        for gram, wt in zip(grams, w.tolist()):
            for e in postings.get(gram, ()):
                acc[e] = acc.get(e, 0.0) + wt
        denominator = float(w.sum())
        return {e: v / denominator for e, v in acc.items()}

    similar: dict[int, dict[int, float]] = {}  # train row -> {eval row: Jaccard}, lowest eval row first
    if config.near is not None:
        offset = len(eval_texts)
        for i, j, sim in near_duplicate_pairs(eval_texts + train_texts, config.near):
            a, b = sorted((i, j))
            if a < offset <= b:
                similar.setdefault(b - offset, {})[a] = sim

    hits: dict[int, tuple[str, int, float, list[int]]] = {}  # train row -> (reason, eval row, similarity, close rows)
    flagged = set(np.flatnonzero(share >= config.max_overlap).tolist())
    for row in sorted(flagged | set(similar)):
        per_eval = per_eval_share(row)
        close = _close_rows(per_eval, similar.get(row, {}), config.max_overlap)
        if row in flagged:
            best = max(per_eval, key=per_eval.get)  # first of the best on ties
            hits[row] = ("eval_ngram_overlap", best, float(share[row]), close)
        else:
            eval_row, sim = next(iter(similar[row].items()))
            hits[row] = ("eval_near_duplicate", eval_row, sim, close)

    matched_eval = sorted({e for *_, close in hits.values() for e in close})
    if not hits:
        return StepResult(train, empty_drops(), {"eval_rows_matched": 0})
    rows = sorted(hits)
    reasons = [hits[r][0] for r in rows]
    stock = " (stock phrases left out)" if np.isfinite(cap) else ""
    how = [what for what, on in (("stock phrases left out", np.isfinite(cap)), ("weighted by rarity", config.weighting == "idf")) if on]
    weighted = f" ({', '.join(how)})" if how else ""
    drops = make_drops(
        id=train["id"].gather(rows),
        step="decontaminate",
        reason=reasons,
        duplicate_of=[eval_ids[hits[r][1]] for r in rows],
        similarity=[float(hits[r][2]) for r in rows],
        detail=[
            (f"{hits[r][2]:.0%} of its {config.ngram}-grams{weighted} occur in the evaluation set, most in "
             f"evaluation row {hits[r][1] + 1}; {_closeness(hits[r][3])}"
             if hits[r][0] == "eval_ngram_overlap"
             else f"Jaccard {hits[r][2]:.2f}{stock} with evaluation row {hits[r][1] + 1}; {_closeness(hits[r][3])}")
            for r in rows
        ],
    )
    keep = pl.Series([True] * train.height)
    keep = keep.scatter(rows, False)
    return StepResult(train.filter(keep), drops, {**Counter(reasons), "eval_rows_matched": len(matched_eval)})

"""Decontamination: drop training rows that overlap an evaluation or held-out set.

Two checks, either enough to drop a row:

* word n-gram overlap: the share of the training row's n-grams that also occur in
  the evaluation set (8-grams by default, as in the Tulu and OLMo decontamination
  passes; GPT-3's 13-grams are too long for short instruction data);
* MinHash near-duplication: Jaccard similarity of shingle sets above the near-dedup
  threshold, found with the same MinHash LSH as `curate dedup`.

Each drop names the evaluation row it overlaps, so the evidence can be checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from curate.dedup.near import NearDedupConfig, near_duplicate_pairs
from curate.drops import empty_drops, make_drops
from curate.text import DEFAULT_FIELDS, match_text


@dataclass
class DecontaminationConfig:
    """How much overlap with the evaluation set makes a training row contaminated."""

    ngram: int = 8
    """Word n-gram length for the overlap check."""
    max_ngram_overlap: float = 0.5
    """Drop when at least this share of the row's n-grams occurs in the evaluation set."""
    near: NearDedupConfig | None = field(default_factory=NearDedupConfig)
    """MinHash check (None turns it off); its threshold is a Jaccard similarity."""
    fields: tuple[str, ...] = DEFAULT_FIELDS
    """Compared text: by default everything, so that a test prompt paired with any answer counts."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 0 < self.max_ngram_overlap <= 1:
            raise ValueError(f"max_ngram_overlap must be in (0, 1], got {self.max_ngram_overlap}")


@dataclass
class DecontaminationResult:
    kept: pl.DataFrame
    drops: pl.DataFrame
    counts: dict[str, int]


def _ngrams(text: str, n: int) -> list[int]:
    words = text.split()
    if len(words) < n:  # a short row is one n-gram: the whole row
        return [hash(tuple(words))] if words else []
    return [hash(tuple(words[k : k + n])) for k in range(len(words) - n + 1)]


def decontaminate(train: pl.DataFrame, evaluation: pl.DataFrame, config: DecontaminationConfig | None = None) -> DecontaminationResult:
    """Drop rows of `train` that overlap `evaluation`."""
    config = config or DecontaminationConfig()
    if train.height == 0:
        raise ValueError("the training set is empty")
    if evaluation.height == 0:
        raise ValueError("the evaluation set is empty")
    train_texts = train.select(match_text(config.fields)).to_series().to_list()
    eval_texts = evaluation.select(match_text(config.fields)).to_series().to_list()
    eval_ids = evaluation["id"].to_list()

    owner: dict[int, int] = {}
    for row, text in enumerate(eval_texts):
        for gram in _ngrams(text, config.ngram):
            owner.setdefault(gram, row)

    hits: dict[int, tuple[str, int, float]] = {}  # train row -> (reason, eval row, similarity)
    for row, text in enumerate(train_texts):
        grams = _ngrams(text, config.ngram)
        matched = [owner[g] for g in grams if g in owner]
        if grams and len(matched) / len(grams) >= config.max_ngram_overlap:
            eval_row, _ = Counter(matched).most_common(1)[0]
            hits[row] = ("eval_ngram_overlap", eval_row, len(matched) / len(grams))

    if config.near is not None:
        offset = len(eval_texts)
        for i, j, sim in near_duplicate_pairs(eval_texts + train_texts, config.near):
            a, b = sorted((i, j))
            if a < offset <= b and (b - offset) not in hits:
                hits[b - offset] = ("eval_near_duplicate", a, sim)

    if not hits:
        return DecontaminationResult(train, empty_drops(), {})
    rows = sorted(hits)
    reasons = [hits[r][0] for r in rows]
    drops = make_drops(
        id=train["id"].gather(rows),
        step="decontaminate",
        reason=reasons,
        duplicate_of=[eval_ids[hits[r][1]] for r in rows],
        similarity=[float(hits[r][2]) for r in rows],
        detail=[
            (f"{hits[r][2]:.0%} of its {config.ngram}-grams occur in evaluation row {hits[r][1] + 1}"
             if hits[r][0] == "eval_ngram_overlap"
             else f"Jaccard {hits[r][2]:.2f} with evaluation row {hits[r][1] + 1}")
            for r in rows
        ],
    )
    keep = pl.Series([True] * train.height)
    keep = keep.scatter(rows, False)
    return DecontaminationResult(train.filter(keep), drops, dict(Counter(reasons)))

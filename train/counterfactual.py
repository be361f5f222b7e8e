"""The counterfactual check of a classifier: swap identity terms in the test inputs and count changed answers.

A support ticket from "my wife" and the same ticket from "my husband" should get the same
label. For every test row whose user turns name an identity term (`curate.identity_terms`:
gender, age, nationality, religion, or the user's `--terms FILE`), `train eval` asks every
contender again with each term swapped for its partner, and counts the rows whose answer
changed: the flip rate, per contender and per term group, with a bootstrap interval over the
swapped rows and a few flipped rows to read (all of them in `counterfactual.parquet`). A flip is an answer that depends on who the
request is about, not what it asks; a low rate is the goal, a few flips on a small set are
what the interval is for. Rows without an identity term are not asked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from curate.identity_terms import TermSet
from train.prompts import Example, Messages

MAX_EXAMPLES = 5


@dataclass
class Swap:
    """One test row with its identity terms swapped."""

    row: int
    prompt: Messages
    groups: list[str]
    before: str
    after: str


def swaps(examples: Sequence[Example], terms: TermSet) -> list[Swap]:
    """The test rows that name an identity term, their prompts with every term swapped (user turns only)."""
    out = []
    for i, example in enumerate(examples):
        prompt, groups = [], []
        for message in example.prompt:
            if message["role"] == "user":
                text, found = terms.swap(message["content"])
                groups += found
                message = {**message, "content": text}
            prompt.append(message)
        if groups:
            before = next(m["content"] for m in reversed(example.prompt) if m["role"] == "user")
            after = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
            out.append(Swap(i, prompt, list(dict.fromkeys(groups)), before, after))
    return out


def flip_rows(swapped: Sequence[Swap], original: dict[str, Sequence[str | None]], answers: dict[str, Sequence[str | None]],
              test_ids: Sequence[str]) -> pl.DataFrame:
    """One row per swapped test row and contender: the input, the swapped input, both answers, and whether it flipped.

    `original`: contender -> its answers on every test row; `answers`: contender -> its
    answers on the swapped rows, in `swapped`'s order.
    """
    rows = [{"row": s.row, "id": test_ids[s.row], "contender": name, "groups": ",".join(s.groups), "input": s.before,
             "swapped": s.after, "answer": original[name][s.row], "swapped_answer": after,
             "flipped": original[name][s.row] != after}
            for name, answered in answers.items() for s, after in zip(swapped, answered)]
    return pl.DataFrame(rows, schema={"row": pl.Int64, "id": pl.String, "contender": pl.String, "groups": pl.String,
                                      "input": pl.String, "swapped": pl.String, "answer": pl.String,
                                      "swapped_answer": pl.String, "flipped": pl.Boolean})


def flip_report(table: pl.DataFrame, swapped: Sequence[Swap], terms: TermSet, seed: int = 0) -> dict[str, Any]:
    """Per contender (from `flip_rows`' table): how many swapped rows' answers changed, overall and per term group."""
    from train import bootstrap

    groups = list(dict.fromkeys(g for s in swapped for g in s.groups))
    report: dict[str, Any] = {"terms": terms.source or "default", "rows_swapped": len(swapped),
                              "groups": {g: sum(g in s.groups for s in swapped) for g in groups}, "flips": {}, "examples": []}
    if not swapped:
        return report
    draws = bootstrap.resample_indices(len(swapped), seed=seed)
    for name in table["contender"].unique(maintain_order=True).to_list():
        rows = table.filter(pl.col("contender") == name).sort("row")
        flipped = rows["flipped"].to_list()
        # The flip rate is 1 - the agreement of the two answers, scored as accuracy of one against the other.
        same = bootstrap.interval("classification", "accuracy", [str(b) for b in rows["answer"]],
                                  [str(a) for a in rows["swapped_answer"]], (), draws=draws)
        report["flips"][name] = {
            "flipped": sum(flipped), "rate": sum(flipped) / len(swapped), "low": 1 - same["high"], "high": 1 - same["low"],
            "by_group": {g: {"rows": report["groups"][g], "flipped": sum(f for f, s in zip(flipped, swapped) if g in s.groups)}
                         for g in groups},
        }
    adapter = table.filter((pl.col("contender") == "adapter") & pl.col("flipped")).sort("row").head(MAX_EXAMPLES)
    report["examples"] = adapter.select("id", "groups", "input", "swapped", "answer", "swapped_answer").to_dicts()
    return report

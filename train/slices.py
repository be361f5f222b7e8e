"""Per-slice evaluation: every contender's metric on each slice of the test set, the worst slice and the gap.

One global accuracy hides a model that fails one kind of input: a source, a synthetic
axis value, long requests. `train eval --slice-by FIELD` splits the test rows by FIELD and
scores every contender on each part, as Fairlearn's `MetricFrame` does for groups: the
worst slice, and the gap between the best and the worst slice as a difference (max - min)
and a ratio (min / max; `MetricFrame.difference()` and `.ratio()` with
`method="between_groups"`). Each slice's figure carries its own percentile bootstrap
interval (`train.bootstrap`, rows resampled within the slice), so a slice of six rows shows
how little it says.

FIELD is `source`, `label` (the gold label), `length` (the input's words in up to three
buckets at this test set's terciles), a key of the rows' `meta` (dotted for nested keys:
`synth.strategy`), or a synthetic axis (`meta.synth.axes.NAME`, found by its bare NAME).
Rows without the field form a "(missing)" slice. Macro-F1 on a slice averages over the
labels that occur in that slice, as scikit-learn does for a subgroup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import InputError

LENGTH = "length"
MISSING = "(missing)"
COLUMNS = ("source", "label")


def slice_keys(records: pl.DataFrame, inputs: Sequence[str], field: str, path: str | Path) -> tuple[list[str], list[str]]:
    """Each test row's slice for `field`, and the slices in display order.

    `inputs` are the rows' input texts (for `length`). A field no row has is an InputError
    naming the test file, the field and what could be sliced by instead.
    """
    if field == LENGTH:
        return length_buckets([len(text.split()) for text in inputs])
    if field in COLUMNS and field in records.columns:
        values = [MISSING if v is None else str(v) for v in records[field].to_list()]
    else:
        metas = [_meta(m) for m in records["meta"].to_list()] if "meta" in records.columns else [{}] * records.height
        values = [_value(meta, field) for meta in metas]
        if all(v == MISSING for v in values):
            keys = sorted({k for meta in metas for k in meta if k != "synth"})
            axes = sorted({k for meta in metas for k in (meta.get("synth") or {}).get("axes") or {}})
            raise InputError(path, "no test row has this field to slice by; slice by source, label, length, "
                             f"a meta key ({', '.join(keys) or 'none here'}) or a synth axis ({', '.join(axes) or 'none here'})",
                             field=field)
    return values, sorted(set(values), key=lambda v: (v == MISSING, v))


def length_buckets(words: Sequence[int]) -> tuple[list[str], list[str]]:
    """Up to three buckets of input length cut at the terciles, named by the word counts they hold."""
    if not words:
        return [], []
    counts = np.asarray(words)
    edges = sorted({int(np.quantile(counts, q, method="lower")) for q in (1 / 3, 2 / 3)})
    index = np.searchsorted(np.asarray(edges), counts, side="left")  # bucket k: edges[k-1] < words <= edges[k]
    used = sorted(set(index.tolist()))
    names = {1: ["all"], 2: ["short", "long"], 3: ["short", "medium", "long"]}[len(used)]
    labels = {}
    for name, k in zip(names, used):
        members = counts[index == k]
        low, high = int(members.min()), int(members.max())
        labels[k] = f"{name}: {low} words" if low == high else f"{name}: {low}-{high} words"
    return [labels[k] for k in index.tolist()], [labels[k] for k in used]


def slice_report(field: str, keys: Sequence[str], order: Sequence[str], task: str, metrics: Sequence[str],
                 gold: Sequence[str], predictions: dict[str, Sequence[str | None]], primary: str, seed: int = 0) -> dict[str, Any]:
    """Every contender's metrics per slice with intervals, and per contender and metric the worst slice and the gap.

    `predictions`: contender -> its answers in test-row order. `primary` is the metric the
    headline (`worst`, `largest_gap`) is about: the objective's, else the task's first.
    """
    from train import bootstrap

    keys_a = np.asarray(list(keys), dtype=object)
    slices = []
    for k, value in enumerate(order):
        idx = np.flatnonzero(keys_a == value)
        sub_gold = [gold[i] for i in idx]
        draws = bootstrap.resample_indices(len(idx), seed=seed + k)
        slices.append({"value": value, "rows": int(len(idx)), "metrics": {
            name: {m: bootstrap.interval(task, m, sub_gold, [pred[i] for i in idx], (), draws=draws) for m in metrics}
            for name, pred in predictions.items()}})
    summary = {name: {m: gap([(s["value"], s["metrics"][name][m]["value"]) for s in slices]) for m in metrics}
               for name in predictions}
    main = "adapter" if "adapter" in summary else next(iter(summary))
    widest = max(summary, key=lambda name: summary[name][primary]["difference"])
    return {"field": field, "metric": primary, "slices": slices, "summary": summary,
            "worst": {"contender": main, **summary[main][primary]},
            "largest_gap": {"contender": widest, **summary[widest][primary]}}


def gap(values: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The worst and best slice, their difference (max - min) and ratio (min / max, None when max is 0)."""
    worst = min(values, key=lambda v: v[1])
    best = max(values, key=lambda v: v[1])
    return {"worst_slice": worst[0], "worst": worst[1], "best_slice": best[0], "best": best[1],
            "difference": best[1] - worst[1], "ratio": worst[1] / best[1] if best[1] > 0 else None}


def _meta(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _value(meta: dict, field: str) -> str:
    if field in meta:
        found = meta[field]
    elif field in ((meta.get("synth") or {}).get("axes") or {}):
        found = meta["synth"]["axes"][field]
    else:
        found = meta
        for part in field.split("."):
            found = found.get(part) if isinstance(found, dict) else None
    if found is None:
        return MISSING
    return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False, sort_keys=True)

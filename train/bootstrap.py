"""Confidence intervals for test-set metrics: the percentile bootstrap over test rows.

A test set of a few hundred rows gives an accuracy that moves by several points when
other rows are drawn, so every figure the workbench compares (a learning curve's
points, an ablation's variants, the verdict) carries an interval. Differences between
two contenders are *paired*: both are scored on the same resampled rows, which is
what makes a 2-point difference on the same 300 rows meaningful when two independent
intervals would overlap (Efron & Tibshirani, "An Introduction to the Bootstrap", ch. 13).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from train import metrics as M

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def _per_row_metric(task: str, metric: str, gold: Sequence[str], predicted: Sequence[str | None],
                    labels: Sequence[str]):
    """A function of row indices -> the metric on those rows (fast paths for the per-row metrics)."""
    gold_a = np.array(list(gold), dtype=object)
    pred_a = np.array([p if p is not None else M.NONE_LABEL for p in predicted], dtype=object)
    if metric == "accuracy":
        hits = (gold_a == pred_a).astype(float)
        return lambda idx: float(hits[idx].mean())
    if metric == "macro_f1":
        classes = list(dict.fromkeys([*labels, *gold_a.tolist()]))
        index = {c: k for k, c in enumerate(classes)}
        g = np.array([index[x] for x in gold_a])
        p = np.array([index.get(x, -1) for x in pred_a])

        def macro_f1(idx: np.ndarray) -> float:
            gi, pi = g[idx], p[idx]
            f1s = []
            for k in range(len(classes)):
                tp = np.sum((gi == k) & (pi == k))
                fp = np.sum((gi != k) & (pi == k))
                fn = np.sum((gi == k) & (pi != k))
                f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
            return float(np.mean(f1s))
        return macro_f1
    if metric in ("exact_match", "token_f1"):
        fn = M.exact_match if metric == "exact_match" else M.token_f1
        values = np.array([fn(a, b) for a, b in zip(gold, predicted)], dtype=float)
        return lambda idx: float(values[idx].mean())
    if metric == "rouge_l":
        values = np.array(M.rouge_l(list(gold), list(predicted)), dtype=float)
        return lambda idx: float(values[idx].mean())
    raise ValueError(f"no bootstrap for metric {metric!r} (task {task})")


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(task: str, metric: str, gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] = (),
             *, draws: np.ndarray | None = None, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """{"value", "low", "high", "level"}: the metric and its percentile bootstrap interval."""
    n = len(gold)
    f = _per_row_metric(task, metric, gold, predicted, labels)
    value = f(np.arange(n))
    if n == 0:
        return {"value": value, "low": value, "high": value, "level": level}
    draws = resample_indices(n) if draws is None else draws
    stats = np.array([f(idx) for idx in draws])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": value, "low": float(lo), "high": float(hi), "level": level}


def paired_difference(task: str, metric: str, gold: Sequence[str], predicted: Sequence[str | None],
                      reference: Sequence[str | None], labels: Sequence[str] = (), *, draws: np.ndarray | None = None,
                      level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """metric(predicted) - metric(reference) on the same rows, with a paired bootstrap interval.

    `significant` is True when the interval excludes 0: the difference is not a draw of the test rows.
    """
    n = len(gold)
    f = _per_row_metric(task, metric, gold, predicted, labels)
    g = _per_row_metric(task, metric, gold, reference, labels)
    every = np.arange(n)
    value = f(every) - g(every)
    draws = resample_indices(n) if draws is None else draws
    stats = np.array([f(idx) - g(idx) for idx in draws]) if n else np.zeros(1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": float(value), "low": float(lo), "high": float(hi), "level": level,
            "significant": bool(lo > 0 or hi < 0)}


def unpaired_difference(task: str, metric: str, gold: Sequence[str], predicted: Sequence[str | None],
                        gold_then: Sequence[str], predicted_then: Sequence[str | None], labels: Sequence[str] = (), *,
                        seeds: tuple[int, int] = (0, 1), level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """metric on one test set - metric on another (different rows): each resampled on its own, then subtracted.

    For a model scored on an old and a new test set (eval over time); `significant` as in `paired_difference`.
    """
    f = _per_row_metric(task, metric, gold, predicted, labels)
    g = _per_row_metric(task, metric, gold_then, predicted_then, labels)
    value = f(np.arange(len(gold))) - g(np.arange(len(gold_then)))
    if not len(gold) or not len(gold_then):
        return {"value": float(value), "low": float(value), "high": float(value), "level": level, "significant": False}
    draws = zip(resample_indices(len(gold), seed=seeds[0]), resample_indices(len(gold_then), seed=seeds[1]))
    stats = np.array([f(a) - g(b) for a, b in draws])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": float(value), "low": float(lo), "high": float(hi), "level": level,
            "significant": bool(lo > 0 or hi < 0)}

"""What an answer costs: tokens and latency per answer for every contender, and k-shot's cost over the adapter's.

Where the adapter merely ties k-shot prompting on accuracy it often still wins on cost: a
k-shot prompt carries its shots in every request. Per contender, `train eval` reports the
prompt and completion tokens per answer (from the engine's own counts), the batch wall
time per answer (the contender's whole batch over its rows: throughput cost), and the
latency of one request at a time, measured on the first `latency_rows` test rows after one
untimed warm-up request, the contenders interleaved row by row so that a change in the
machine's load falls on all of them alike (median and 90th percentile). The engine keeps
its prefix cache on, as a vLLM server would: the shots a k-shot prompt repeats are
cached, so its latency is what a vLLM deployment of the same prompt would see.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

DEFAULT_LATENCY_ROWS = 5


def measure_latency(engine, conversations: dict[str, list[list[dict]]], sampling, choices: list[str] | None,
                    loras: dict[str, tuple[str, int, str]], rows: int) -> dict[str, list[float]]:
    """Seconds per request, one request at a time, for each contender on the first `rows` conversations."""
    rows = min(rows, min((len(c) for c in conversations.values()), default=0))
    timings: dict[str, list[float]] = {name: [] for name in conversations}
    if rows <= 0:
        return timings
    for name, convs in conversations.items():  # warm-up: loads each adapter into its slot, untimed
        engine.chat(convs[:1], sampling, choices=choices, lora=loras.get(name))
    for i in range(rows):
        for name, convs in conversations.items():
            start = time.perf_counter()
            engine.chat(convs[i:i + 1], sampling, choices=choices, lora=loras.get(name))
            timings[name].append(time.perf_counter() - start)
    return timings


def answer_cost(predictions: pl.DataFrame, seconds: dict[str, float], latency: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Per contender: tokens per answer, batch seconds per answer, single-request latency; k-shot / adapter ratios."""
    per: dict[str, dict[str, Any]] = {}
    for name in predictions["contender"].unique(maintain_order=True).to_list():
        rows = predictions.filter(pl.col("contender") == name)
        prompt, completion = float(rows["prompt_tokens"].mean()), float(rows["completion_tokens"].mean())
        timed = list(latency.get(name, []))
        per[name] = {
            "answers": rows.height, "prompt_tokens": prompt, "completion_tokens": completion, "tokens": prompt + completion,
            "batch_seconds": seconds[name] / rows.height if name in seconds and rows.height else None,
            "latency_seconds": float(np.median(timed)) if timed else None,
            "latency_p90_seconds": float(np.quantile(timed, 0.9)) if timed else None, "latency_requests": len(timed),
        }
    report: dict[str, Any] = {"contenders": per}
    if "kshot" in per and "adapter" in per:
        k, a = per["kshot"], per["adapter"]
        report["kshot_over_adapter"] = {key: _ratio(k[key], a[key]) for key in
                                        ("prompt_tokens", "completion_tokens", "tokens", "batch_seconds", "latency_seconds")}
        report["text"] = cost_text(per)
    return report


def cost_text(per: dict[str, dict[str, Any]]) -> str:
    """One line for the verdict: what a k-shot answer costs against an adapter answer."""
    k, a = per["kshot"], per["adapter"]
    latency = "latency_seconds" if k["latency_seconds"] and a["latency_seconds"] else "batch_seconds"
    what = "latency" if latency == "latency_seconds" else "batch time"
    parts = [f"{_ratio(k['tokens'], a['tokens']):.1f}x the tokens ({k['tokens']:.0f} vs {a['tokens']:.0f} per answer)"]
    if k[latency] and a[latency]:
        parts.append(f"{_ratio(k[latency], a[latency]):.1f}x the {what} "
                     f"({k[latency] * 1000:.0f} vs {a[latency] * 1000:.0f} ms per answer)")
    return "cost: a k-shot answer takes " + " and ".join(parts) + " of an adapter answer"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None

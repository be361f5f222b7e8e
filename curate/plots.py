"""Plots for reports: matplotlib (headless) figures embedded in HTML as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt  # noqa: E402

_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def to_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def funnel(steps: Sequence[str], rows: Sequence[int]) -> str:
    """Rows left after each step, as horizontal bars, widest at the top."""
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(steps)))
    positions = range(len(steps))[::-1]
    ax.barh(list(positions), rows, color=_PALETTE[0])
    ax.set_yticks(list(positions), steps)
    for pos, value in zip(positions, rows):
        ax.text(value, pos, f" {value:,}", va="center")
    ax.set_xlabel("rows")
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)


def bars(categories: Sequence[str], series: dict[str, Sequence[float]], xlabel: str = "", ylabel: str = "rows") -> str:
    """Grouped bars: one group per category, one bar per series (e.g. before / after)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(categories) * len(series)), 3.2))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(categories))], values, width, label=name, color=_PALETTE[k % len(_PALETTE)])
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(categories))], categories, rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)


def histograms(series: dict[str, Sequence[float]], xlabel: str, bins: int = 30) -> str:
    """Overlaid histograms (e.g. lengths before and after curation)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for k, (name, values) in enumerate(series.items()):
        ax.hist(list(values), bins=bins, alpha=0.6, label=name, color=_PALETTE[k % len(_PALETTE)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    if len(series) > 1:
        ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)


def stacked_bars(categories: Sequence[str], groups: dict[str, dict[str, Sequence[float]]], xlabel: str = "",
                 ylabel: str = "rows") -> str:
    """One group per category, one bar per group (e.g. all candidates / training set), each bar
    stacked by part (e.g. real / synthetic): two populations compared, and what each is made of."""
    parts = list(dict.fromkeys(p for stacks in groups.values() for p in stacks))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(categories) * len(groups)), 3.4))
    width = 0.8 / max(len(groups), 1)
    hatches = ["", "//", "..", "xx"]
    for g, (group, stacks) in enumerate(groups.items()):
        positions = [i + g * width for i in range(len(categories))]
        bottom = [0.0] * len(categories)
        for p, part in enumerate(parts):
            values = list(stacks.get(part, [0] * len(categories)))
            ax.bar(positions, values, width, bottom=bottom, color=_PALETTE[p % len(_PALETTE)],
                   hatch=hatches[g % len(hatches)], edgecolor="white", label=f"{group}: {part}")
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(categories))], categories, rotation=30, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)

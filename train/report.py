"""How `train eval` shows its results: rich tables on the terminal, a confusion-matrix PNG and a per-slice PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from curate.atomic import atomic_path
from train.objective import CONTENDER_NAMES


def results_table(report: dict[str, Any]) -> Table:
    """One row per contender, one column per metric (in percent), the verdict as the caption."""
    results = report["results"]
    names = [k for k, v in next(iter(results.values())).items() if isinstance(v, float)]
    table = Table(title=f"{report['task']}, {report['rows']} test rows, k={report['k']}")
    table.add_column("contender")
    for name in names:
        table.add_column(name, justify="right")
    best = {name: max(r[name] for r in results.values()) for name in names}
    for contender, metrics in results.items():
        cells = [f"{metrics[n] * 100:.1f}" for n in names]
        cells = [f"[bold]{c}[/]" if metrics[n] == best[n] else c for c, n in zip(cells, names)]
        table.add_row(CONTENDER_NAMES.get(contender, contender), *cells)
    verdict = report.get("objective")
    if verdict:
        table.caption = f"[{'green' if verdict['passed'] else 'red'}]{verdict['text']}[/]"
    return table


def cost_table(report: dict[str, Any]) -> Table:
    """Tokens and seconds per answer for every contender (the engine's counts; latency one request at a time)."""
    table = Table(title="cost per answer (latency: median of single requests)")
    for column in ("contender", "prompt tokens", "reply tokens", "batch ms", "latency ms", "p90 ms"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for name, c in report["cost"]["contenders"].items():
        table.add_row(CONTENDER_NAMES.get(name, name), f"{c['prompt_tokens']:.1f}", f"{c['completion_tokens']:.1f}",
                      *(_ms(c[k]) for k in ("batch_seconds", "latency_seconds", "latency_p90_seconds")))
    return table


def slices_tables(report: dict[str, Any]) -> list[Table]:
    """Per --slice-by field: the metric of every contender on each slice, then the worst slice and the gap."""
    out = []
    for field, sl in (report.get("slices") or {}).items():
        names = list(sl["summary"])
        table = _by_contender(f"{sl['metric']} by {field}", "slice", names)
        for s in sl["slices"]:
            table.add_row(s["value"], str(s["rows"]), *(_interval(s["metrics"][n][sl["metric"]]) for n in names))
        worst, widest = sl["worst"], sl["largest_gap"]
        ratio = "n/a" if widest["ratio"] is None else f"{widest['ratio']:.2f}"
        table.caption = (f"adapter's worst slice: {worst['worst_slice']} ({worst['worst'] * 100:.1f}); largest gap: "
                         f"{CONTENDER_NAMES.get(widest['contender'], widest['contender'])} {widest['difference'] * 100:.1f} "
                         f"points ({widest['best_slice']} vs {widest['worst_slice']}), ratio {ratio}")
        out.append(table)
    return out


def counterfactual_line(report: dict[str, Any]) -> str | None:
    """How often each contender's answer flips when identity terms are swapped."""
    cf = report.get("counterfactual")
    if not cf:
        return None
    if not cf["rows_swapped"]:
        return f"counterfactual check: no test row names an identity term ({cf['terms']} list)"
    flips = ", ".join(f"{CONTENDER_NAMES.get(n, n)} {f['flipped']}/{cf['rows_swapped']} ({f['rate']:.0%})"
                      for n, f in cf["flips"].items())
    return f"counterfactual check, identity terms swapped in {cf['rows_swapped']} rows: answers flipped: {flips}"


def over_time_table(report: dict[str, Any]) -> Table | None:
    """The metric on every test set in the order given, and each one's change from the first."""
    history = report.get("over_time")
    if not history:
        return None
    names = list(history["rows"][0]["values"])
    table = _by_contender(f"{history['metric']} over time (change from {history['first']})", "test set", names)
    for row in history["rows"]:
        cells = []
        for name in names:
            change = row["change"].get(name)
            cell = _interval(row["intervals"][name])
            if change is not None:
                cell += f" ({change['value'] * 100:+.1f}{'*' if change['significant'] else ''})"
            cells.append(cell)
        table.add_row(row["test"], str(row["rows"]), *cells)
    table.caption = "* the change's 95% interval excludes 0"
    return table


def plot_slices(slices: dict[str, dict[str, Any]], dest: Path) -> Path:
    """Per --slice-by field, one panel: every contender's metric on each slice, with its 95% interval."""
    from curate.plots import _PALETTE, plt

    fields = list(slices.items())
    heights = [0.9 + 0.32 * len(sl["slices"]) * len(sl["summary"]) for _, sl in fields]
    fig, axes = plt.subplots(len(fields), 1, figsize=(7, sum(heights) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (field, sl) in zip(axes[:, 0], fields):
        names, metric = list(sl["summary"]), sl["metric"]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            positions = [i + k * width for i in range(len(sl["slices"]))]
            values = [s["metrics"][name][metric] for s in sl["slices"]]
            errors = [[v["value"] - v["low"] for v in values], [v["high"] - v["value"] for v in values]]
            ax.barh(positions, [v["value"] for v in values], width, xerr=errors, capsize=2,
                    color=_PALETTE[k % len(_PALETTE)], label=CONTENDER_NAMES.get(name, name))
        ax.set_yticks([i + width * (len(names) - 1) / 2 for i in range(len(sl["slices"]))],
                      [f"{s['value']} ({s['rows']})" for s in sl["slices"]])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        worst = sl["worst"]
        ax.set_title(f"{metric} by {field}: adapter's worst slice {worst['worst_slice']}, "
                     f"gap {sl['largest_gap']['difference'] * 100:.0f} points", fontsize=9)
        ax.set_xlabel(f"{metric} (95% interval); slice (rows)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return dest


def _by_contender(title: str, first: str, names: list[str]) -> Table:
    """A table whose rows are slices or test sets: their name, their rows, then one column per contender."""
    table = Table(title=title)
    table.add_column(first)
    table.add_column("rows", justify="right")
    for name in names:
        table.add_column(CONTENDER_NAMES.get(name, name), justify="right")
    return table


def _interval(v: dict[str, Any]) -> str:
    return f"{v['value'] * 100:.1f} [{v['low'] * 100:.0f}, {v['high'] * 100:.0f}]"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def plot_confusion(confusions: dict[str, dict[str, Any]], dest: Path) -> Path:
    """Confusion matrices side by side (rows: gold labels, columns: predictions), counts in the cells."""
    from curate.plots import plt

    n = len(confusions)
    size = max(len(c["predicted"]) for c in confusions.values())
    fig, axes = plt.subplots(1, n, figsize=(n * (1.4 + 0.5 * size), 1.8 + 0.5 * size), squeeze=False)
    for ax, (name, conf) in zip(axes[0], confusions.items()):
        matrix = conf["matrix"]
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, max((max(r) for r in matrix), default=1)))
        ax.set_xticks(range(len(conf["predicted"])), conf["predicted"], rotation=45, ha="right")
        ax.set_yticks(range(len(conf["labels"])), conf["labels"])
        peak = max((max(r) for r in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
        total = sum(map(sum, matrix))
        correct = sum(matrix[i][i] for i in range(min(len(matrix), len(conf["predicted"]))))
        ax.set_title(f"{CONTENDER_NAMES.get(name, name)}\naccuracy {correct / total:.0%}" if total else name)
        ax.set_xlabel("predicted")
    axes[0][0].set_ylabel("gold")
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return dest

"""How `train eval` shows its results: a rich table on the terminal and a confusion-matrix PNG."""

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

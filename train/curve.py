"""`train curve`: how the objective's metric grows with the number of training rows.

The workbench's claim is that a few hundred to a few thousand good rows are enough, and
that returns diminish quickly; this measures both on the user's own data instead of
assuming them. Adapters are trained on nested, seeded subsets of DATA (each size
contains the smaller ones, stratified by label the way `curate select` would pick
them: in proportion for accuracy, balanced for macro-F1), all evaluated by one vLLM
engine against one base and one k-shot baseline (shots from DATA itself, the declared
pool), each with a bootstrap interval. The training seed also orders the subsets. The knee is the smallest size whose metric is
within `tolerance` points of the best size's: more rows than that buy little.

Writes OUT/curve.json (every point, the knee, the baselines), OUT/curve.png (metric
and training time against size), OUT/size-N/ (each subset and its adapter) and
OUT/eval/ (the shared evaluation). A rerun reuses every adapter already trained on the
same subset with the same settings, and resumes one that was cut off.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.atomic import atomic_path, write_text
from curate.console import console
from curate.manifest import Manifest, content_hash, manifest_path
from curate.readers import read_records
from curate.writers import write_records
from train.config import MIN_ROWS, LoraTrainConfig
from train.errors import TrainError

DEFAULT_SIZES = "125,250,500,1000,all"
DEFAULT_TOLERANCE = 2.0


@dataclass
class CurveConfig:
    """What `train curve` measures; the training settings are `train lora`'s own."""

    sizes: str = DEFAULT_SIZES
    """Comma-separated training-set sizes (rows, before the validation split); 'all' is every row."""
    metric: str = "accuracy"
    """The objective's metric, read from the evaluation (accuracy, macro_f1, exact_match, token_f1, rouge_l)."""
    tolerance: float = DEFAULT_TOLERANCE
    """Points (0-100): the knee is the smallest size within this of the best size's metric."""
    stratify: str = "auto"
    """Subset label mix: keep (proportional), balance, or auto (balance for macro_f1, else keep), as `curate select`."""
    def __post_init__(self) -> None:
        if self.stratify not in ("auto", "keep", "balance"):
            raise TrainError(f"stratify must be auto, keep or balance, got {self.stratify!r}")
        if self.tolerance < 0:
            raise TrainError(f"tolerance must be 0 or more points, got {self.tolerance}")

    @property
    def mode(self) -> str:
        if self.stratify != "auto":
            return self.stratify
        return "balance" if self.metric == "macro_f1" else "keep"


def parse_sizes(text: str, available: int) -> list[int]:
    """Sizes in rows, ascending and distinct; 'all' and sizes above the data become every row."""
    sizes = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        if part.lower() == "all":
            sizes.append(available)
            continue
        try:
            n = int(part)
        except ValueError:
            raise TrainError(f"--sizes: {part!r} is not a number of rows or 'all'") from None
        if n < MIN_ROWS:
            raise TrainError(f"--sizes: {n} rows is too few to train on (at least {MIN_ROWS}: some are held out)")
        sizes.append(min(n, available))
    if not sizes:
        raise TrainError("--sizes: give at least one size, e.g. 125,250,all")
    return sorted(set(sizes))


def nested_order(labels: list[str | None], mode: str, seed: int) -> list[int]:
    """Row indices in an order whose every prefix is a stratified sample of the rows.

    Each label's rows are shuffled; the next row goes to the label furthest below its
    target share of the prefix (its share of the data for `keep`, an equal share among
    labels with rows left for `balance`).
    """
    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    queues = {k: [v[j] for j in rng.permutation(len(v))] for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    total = len(labels)
    taken = {k: 0 for k in queues}
    order: list[int] = []
    while len(order) < total:
        open_ = [k for k in queues if taken[k] < len(queues[k])]
        t = len(order) + 1
        if mode == "balance":
            share = {k: 1 / len(open_) for k in open_}
            deficit = {k: t * share[k] - taken[k] for k in open_}
        else:
            deficit = {k: t * len(queues[k]) / total - taken[k] for k in open_}
        best = max(open_, key=lambda k: (deficit[k], -taken[k]))
        order.append(queues[best][taken[best]])
        taken[best] += 1
    return order


def knee(points: list[dict[str, Any]], tolerance_points: float) -> dict[str, Any]:
    """The smallest size within `tolerance_points` of the best metric, and why."""
    best = max(points, key=lambda p: (p["value"], -p["size"]))
    within = [p for p in points if p["value"] >= best["value"] - tolerance_points / 100 - 1e-12]
    chosen = min(within, key=lambda p: p["size"])
    reason = (f"{chosen['size']} rows reach {chosen['value']:.1%}, within {tolerance_points:g} points of the best "
              f"({best['value']:.1%} at {best['size']} rows)")
    return {"size": chosen["size"], "value": chosen["value"], "best_size": best["size"], "best_value": best["value"],
            "reason": reason}


def learning_curve(data: str | Path, test: str | Path, output_dir: str | Path, curve: CurveConfig,
                   train_config: LoraTrainConfig, eval_config=None, *, shots_from: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train one adapter per size, evaluate them all in one engine, write curve.json and curve.png."""
    from train.evaluate import EvalConfig, evaluate

    data, output_dir = Path(data), Path(output_dir)
    eval_config = eval_config or EvalConfig()
    records = read_records(data).records
    if records.height < MIN_ROWS:
        raise TrainError(f"{data}: {records.height} rows; a learning curve needs at least {MIN_ROWS}")
    sizes = parse_sizes(curve.sizes, records.height)
    order = nested_order(records["label"].to_list(), curve.mode, train_config.seed)  # one seed for the whole curve
    manifest = Manifest("train curve", parameters={**curve.__dict__, "mode": curve.mode, "sizes_rows": sizes,
                                                   "train": train_config.to_dict()})
    manifest.add_input(data, rows=records.height)
    output_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[int, dict[str, Any]] = {}
    for n, size in enumerate(sizes, 1):
        folder = output_dir / f"size-{size}"
        subset = folder / "data.parquet"
        rows = records[order[:size]]
        if not subset.exists() or read_records(subset).records["id"].to_list() != rows["id"].to_list():
            folder.mkdir(parents=True, exist_ok=True)
            write_records(rows, subset)
        console.print(f"[bold]curve {n}/{len(sizes)}[/]: {size} rows")
        started = time.perf_counter()
        result = _trained(subset, folder, train_config, progress)
        metrics = json.loads(manifest_path(folder / "adapter").read_text()).get("metrics", {})
        runs[size] = {"adapter": result, "train_seconds": metrics.get("train_seconds"),
                      "wall_seconds": round(time.perf_counter() - started, 2),
                      "labels": dict(rows.group_by("label").len().sort("label").iter_rows()) if "label" in rows.columns else {}}

    names = {size: f"n={size}" for size in sizes}
    largest = sizes[-1]
    compare = {names[s]: runs[s]["adapter"] for s in sizes if s != largest}
    evaluated = evaluate(runs[largest]["adapter"], test, output_dir / "eval", eval_config, progress=progress,
                         shots_from=shots_from or data, compare=compare)
    report = evaluated.report
    available = [m for m in report["intervals"]["base"]]
    if curve.metric not in available:
        raise TrainError(f"the curve's metric {curve.metric!r} is not measured for this task; choose one of {', '.join(available)}")
    points = []
    for size in sizes:
        contender = "adapter" if size == largest else names[size]
        ci = report["intervals"][contender][curve.metric]
        points.append({"size": size, "contender": contender, "value": ci["value"], "low": ci["low"], "high": ci["high"],
                       "train_seconds": runs[size]["train_seconds"], "wall_seconds": runs[size]["wall_seconds"],
                       "labels": runs[size]["labels"], "adapter": str(runs[size]["adapter"])})
    found = knee(points, curve.tolerance)
    baselines = {name: report["intervals"][name][curve.metric] for name in ("base", "kshot")}
    summary = {"metric": curve.metric, "tolerance_points": curve.tolerance, "stratify": curve.mode,
               "data": str(data), "data_rows": records.height, "test": str(test), "rows_tested": report["rows"],
               "shots_from": report["shots_from"], "shots": report["shots"], "points": points, "knee": found,
               "baselines": baselines, "eval": str(evaluated.eval_json)}
    png = plot_curve(summary, output_dir / "curve.png")
    out = output_dir / "curve.json"
    write_text(out, json.dumps(summary, indent=2) + "\n")
    manifest.add_output(out)
    manifest.add_output(png)
    manifest.counts = {"sizes": len(sizes), "knee": found["size"], "test_rows": report["rows"]}
    manifest.write(out)
    return summary


def _trained(subset: Path, folder: Path, config: LoraTrainConfig, progress: bool) -> Path:
    """The adapter for `subset`: reused when trained on this content with these settings, else trained (or resumed)."""
    from train.lora import CHECKPOINT_DIR, STATE_FILE, train_lora

    adapter = folder / "adapter"
    marker = folder / "trained.json"  # what the finished adapter was trained on, with which settings
    key = {"data": content_hash(subset), "config": config.to_dict()}
    if marker.is_file() and json.loads(marker.read_text()) == key and (adapter / "adapter_config.json").is_file():
        console.print(f"  reusing {adapter} (same rows, same settings)")
        return adapter
    marker.unlink(missing_ok=True)
    resume = (folder / CHECKPOINT_DIR / STATE_FILE).is_file()
    try:
        trained = train_lora(subset, folder, config, resume=resume, progress=progress).adapter_dir
    except TrainError as exc:
        if not (resume and "checkpoint" in str(exc)):
            raise
        trained = train_lora(subset, folder, config, progress=progress).adapter_dir  # settings changed: start afresh
    write_text(marker, json.dumps(key, sort_keys=True) + "\n")
    return trained


def plot_curve(summary: dict[str, Any], dest: Path) -> Path:
    """Metric (with its interval) and training time against training rows; baselines and the knee marked."""
    from curate.plots import plt

    pts = summary["points"]
    x = [p["size"] for p in pts]
    y = [p["value"] * 100 for p in pts]
    err = [[(p["value"] - p["low"]) * 100 for p in pts], [(p["high"] - p["value"]) * 100 for p in pts]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label="adapter")
    colours = {"base": "#999999", "kshot": "#d62728"}
    for name, ci in summary["baselines"].items():
        ax.axhline(ci["value"] * 100, ls="--", color=colours[name], label=f"base {'k-shot' if name == 'kshot' else 'zero-shot'}")
    k = summary["knee"]
    ax.axvline(k["size"], color="#2ca02c", ls=":", label=f"knee: {k['size']} rows")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    ax.set_xlabel("training rows")
    ax.set_ylabel(f"{summary['metric']} (%)")
    ax.set_title(f"learning curve, {summary['rows_tested']} test rows (95% CI)")
    ax.legend(fontsize=8, loc="lower right")
    ax2.plot(x, [p["train_seconds"] or 0 for p in pts], marker="s", color="#8c564b")
    ax2.set_xscale("log")
    ax2.set_xticks(x, [str(v) for v in x])
    ax2.minorticks_off()
    ax2.set_xlabel("training rows")
    ax2.set_ylabel("training seconds")
    ax2.set_title("training time")
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return dest

"""The curation report: one static HTML page that shows what happened to the data and why.

Built from the lineage of a dataset (manifests and drops tables), so it needs
nothing but the files the commands wrote. Plots are PNGs embedded in the page:
the file can be mailed or attached to an issue as it is.
"""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from curate import __version__, plots
from curate.atomic import write_text
from curate.errors import InputError
from curate.lineage import Step, steps
from curate.readers import FORMATS, read_records
from curate.records import CORE_COLUMNS

EXAMPLES_PER_REASON = 3
TOP_CLUSTERS = 5


def build_report(dataset: str | Path, title: str | None = None) -> str:
    body = "\n".join(curation_sections(dataset))
    return page(title or f"Curation report: {Path(dataset).name}", body)


def curation_sections(dataset: str | Path, before: str | Path | None = None,
                      names: tuple[str, str] = ("before", "after")) -> list[str]:
    """The report's sections (HTML) for `dataset`: funnel, drops, labels, lengths, scores, clusters.

    Labels and lengths compare `before` (default: the oldest step's output) with `dataset`;
    a caller that knows the population curation started from (a run's merged candidates,
    real and synthetic) names it, so that both sides count the same kind of rows, and can
    call the two sides by what they are (`names`).
    """
    chain = steps(dataset)
    if not chain:
        raise InputError(dataset, "no manifest beside this dataset: it was not written by a curate command")
    final = read_records(dataset).records
    first = read_records(before if before is not None else chain[0].output).records
    sections = [
        _funnel(chain),
        _drops(chain),
        _labels(first, final, names),
        _lengths(first, final, names),
        _scores(final),
        _clusters(chain),
    ]
    return [s for s in sections if s]


def page(title: str, body: str) -> str:
    """A standalone HTML page in the reports' style."""
    return _PAGE.format(title=html.escape(title), body=body, version=__version__)


def write_report(dataset: str | Path, output: str | Path, title: str | None = None) -> Path:
    write_text(output, build_report(dataset, title))
    return Path(output)


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _text(record: dict | None, width: int = 300) -> str:
    if not record:
        return "(row not found)"
    text = " / ".join(f"{t['role']}: {t['content']}" for t in record.get("messages") or [])
    if record.get("label") is not None:
        text += f" [label: {record['label']}]"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _funnel(chain: list[Step]) -> str:
    names, rows, lines = [], [], []
    first_in = chain[0].manifest.get("counts", {}).get("in")
    if first_in is not None:
        names.append("input")
        rows.append(first_in)
    for step in chain:
        counts = step.manifest.get("counts", {})
        names.append(f"{step.command.split()[-1]} ({step.output.name})")
        rows.append(counts.get("out", 0))
        lines.append([step.command, step.output.name, counts.get("in", ""), counts.get("out", ""),
                      counts.get("dropped", counts.get("rejected", 0)), f"{step.manifest.get('wall_time_s', 0):.1f} s"])
    return ("<h2>Funnel</h2>" + img(plots.funnel(names, rows), "rows after each step")
            + table(["step", "output", "rows in", "rows out", "dropped", "wall time"], lines))


def _input_rows(step: Step) -> dict[str, dict]:
    """The rows a step read, by id, to show what it dropped. Inputs that are not datasets (the
    task spec of `synth generate`, whose dropped samples were never in any file) give none."""
    frames = [read_records(p).records for p in step.inputs
              if p.exists() and (p.is_dir() or p.suffix.lower() in FORMATS)]
    if not frames:
        return {}
    return {r["id"]: r for r in pl.concat(frames, how="diagonal_relaxed").iter_rows(named=True)}


def _drops(chain: list[Step]) -> str:
    parts, reasons_all = [], {}
    for step in chain:
        drops = step.drops
        if drops.height == 0:
            continue
        by_id = _input_rows(step)
        for reason, group in drops.group_by("reason", maintain_order=True):
            reason = reason[0]
            reasons_all[f"{step.command.split()[-1]}: {reason}"] = group.height
            rows = []
            for drop in group.head(EXAMPLES_PER_REASON).iter_rows(named=True):
                dup = by_id.get(drop["duplicate_of"]) if drop["duplicate_of"] else None
                rows.append([_text(by_id.get(drop["id"])), drop["detail"] or "", _text(dup) if dup else ""])
            parts.append(f"<h3>{html.escape(step.command)}: {html.escape(reason)} ({group.height} rows)</h3>"
                         + table(["example", "why", "matches"], rows))
    if not reasons_all:
        return "<h2>Drops by reason</h2><p>No row was dropped.</p>"
    chart = plots.bars(list(reasons_all), {"rows": list(reasons_all.values())})
    return "<h2>Drops by reason</h2>" + img(chart, "drops by reason") + "".join(parts)


def _label_counts(df: pl.DataFrame) -> dict[tuple[object, str], int]:
    """Rows per (label, origin), origin 'real' or 'synthetic' (rows `synth generate` made)."""
    from curate.review.routing import is_synthetic

    origin = pl.when(is_synthetic()).then(pl.lit("synthetic")).otherwise(pl.lit("real")).alias("origin")
    return {(label, kind): n for label, kind, n in df.with_columns(origin).group_by("label", "origin").len().iter_rows()}


def _labels(first: pl.DataFrame, final: pl.DataFrame, names: tuple[str, str] = ("before", "after")) -> str:
    """Labels of the population curation started from and of the rows it kept, real and synthetic stacked."""
    if first["label"].null_count() == first.height:
        return ""
    before, after = _label_counts(first), _label_counts(final)
    labels = sorted({k for k, _ in before} | {k for k, _ in after}, key=str)
    parts = [p for p in ("real", "synthetic") if any(k[1] == p for k in (*before, *after))]
    groups = {name: {p: [counts.get((k, p), 0) for k in labels] for p in parts}
              for name, counts in zip(names, (before, after))}
    chart = plots.stacked_bars([str(k) for k in labels], groups, xlabel="label")
    header = ["label", *(f"{name}: {p}" if len(parts) > 1 else name for name in groups for p in parts)]
    rows = [[k, *(groups[name][p][i] for name in groups for p in parts)] for i, k in enumerate(labels)]
    return "<h2>Labels before and after</h2>" + img(chart, "label distribution") + table(header, rows)


def _length(df: pl.DataFrame) -> list[int]:
    return df.select(pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()).to_series().to_list()


def _lengths(first: pl.DataFrame, final: pl.DataFrame, names: tuple[str, str] = ("before", "after")) -> str:
    chart = plots.histograms({names[0]: _length(first), names[1]: _length(final)}, "characters per conversation")
    return "<h2>Lengths</h2>" + img(chart, "length histogram")


def _is_rank(values: pl.Series) -> bool:
    """A rank or row index: distinct integers without gaps, whose histogram is flat by construction."""
    return values.dtype.is_integer() and values.n_unique() == values.len() and int(values.max()) - int(values.min()) + 1 == values.len()


def _scores(final: pl.DataFrame) -> str:
    """A histogram per score column that varies; a constant or a rank (`select_rank`) says nothing as a chart."""
    numeric = [c for c, t in final.schema.items() if c not in CORE_COLUMNS and t.is_numeric() and final[c].null_count() < final.height]
    charts, constant = [], []
    for c in numeric:
        values = final[c].drop_nulls()
        if values.n_unique() == 1:
            constant.append(f"{c} = {values[0]}")
        elif not (c.endswith("_rank") or _is_rank(values)):
            charts.append(f"<h3>{html.escape(c)}</h3>" + img(plots.histograms({c: values.to_list()}, c), c))
    if not charts and not constant:
        return ""
    same = f"<p>The same in every kept row: {html.escape(', '.join(constant))}.</p>" if constant else ""
    return "<h2>Scores and measures (kept rows)</h2>" + same + "".join(charts)


def _clusters(chain: list[Step]) -> str:
    parts = []
    for step in chain:
        drops = step.drops.filter(pl.col("reason").str.ends_with("_duplicate"))
        if drops.height == 0:
            continue
        by_id = _input_rows(step)
        top = drops.group_by("duplicate_of").agg(pl.len().alias("n"), pl.col("id").head(2), pl.col("reason").first()).sort("n", descending=True).head(TOP_CLUSTERS)
        rows = [[r["n"] + 1, r["reason"], _text(by_id.get(r["duplicate_of"]), 160), " | ".join(_text(by_id.get(i), 120) for i in r["id"])]
                for r in top.iter_rows(named=True)]
        parts.append(f"<h3>{html.escape(step.command)}</h3>" + table(["cluster size", "method", "kept row", "dropped examples"], rows))
    return "<h2>Largest duplicate clusters</h2>" + "".join(parts) if parts else ""


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0 1.6em; width: 100%; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} h2 {{ border-bottom: 2px solid #4c72b0; padding-bottom: 4px; }}
</style></head>
<body><h1>{title}</h1>
{body}
<footer><p>smallset {version}</p></footer>
</body></html>
"""

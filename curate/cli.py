"""The `curate` command: bring raw examples into the record model, then one command per step (dedup, filter, ...).

The step commands are made from the steps themselves (`curate.step_cli.step_command`), built-in
or plugin, and loaded only when used; the commands here are the ones that are not steps.
"""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl

from curate import __version__
from curate.atomic import sidecar
from curate.console import SmallsetGroup, console
from curate.library_log import verbose_option
from curate.engine_cli import EngineChoice, engine_options
from curate.explain import explain as explain_row
from curate.layouts import LAYOUTS, Mapping
from curate.manifest import Manifest
from curate.models import resolve_embedder, resolve_llm
from curate.plugins import load, registered
from curate.readers import read_records
from curate.renamed_flags import renamed
from curate.report_options import report_options
from curate.step_cli import executor_from_cli, executor_options, step_command
from curate.writers import check_output, write_records, write_rejects


class CurateGroup(SmallsetGroup):
    """`curate`'s commands: its own, plus one per registered step (built-in or plugin), loaded on first use."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(registered("steps")))

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in registered("steps"):
            command = step_command(load("steps", name))
            self.add_command(command)
        return command


@click.group(cls=CurateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
@verbose_option
def main() -> None:
    """Curate small, high-quality datasets for fine-tuning.

    Every command reads a dataset and writes a new one, plus a manifest beside it
    (OUTPUT's name with .manifest.json) that records inputs, parameters, versions,
    counts and wall time. Steps that remove rows write, for every row they drop,
    the reason to OUTPUT's .drops.parquet.
    """


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output file: .parquet or .jsonl.")
@click.option("--layout", type=click.Choice(list(LAYOUTS)), help="Input layout; detected from the column names when omitted.")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN", help="Which input column plays a layout field (repeatable), e.g. --map prompt=question.")
@click.option("--source", help="Value of the `source` column (default: each input's file name).")
@click.option("--split", help="Split to read from a saved DatasetDict folder (default: train).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at the first bad row and write nothing. skip: write the good rows and OUTPUT.rejects.jsonl.")
@click.option("--delimiter", help="CSV/TSV field delimiter, one character or 'tab' (default: ',' for .csv, tab for .tsv).")
@click.option("--encoding", help="Text encoding of JSONL/JSON/CSV/TSV inputs, e.g. utf-8-sig, utf-16, latin-1, cp1252 (default: utf-8).")
@executor_options
def ingest(inputs: tuple[Path, ...], output: Path, layout: str | None, pairs: tuple[str, ...],
           source: str | None, split: str | None, on_error: str, delimiter: str | None, encoding: str | None,
           executor: str, ray_address: str | None, ray_workers: int | None) -> None:
    """Read raw examples (JSONL, JSON, CSV, TSV, Parquet, a saved datasets folder) into records.

    Known layouts: chat `messages`; ShareGPT `conversations`; `prompt`/`completion`;
    Alpaca `instruction`/`input`/`output`; `text` + `label`. Unmapped columns go to `meta`.

    With --executor ray the inputs are read side by side, one Ray task each (every node
    must see the files); the records are the same.

    \b
    Example:
      curate ingest tickets.csv --map text=body --map label=category -o tickets.parquet
    """
    check_output(output, inputs=inputs)
    mapping = Mapping.parse(layout, pairs)
    manifest = Manifest("curate ingest", parameters={"layout": layout, "map": list(pairs), "source": source,
                                                     "split": split, "on_error": on_error,
                                                     "delimiter": delimiter, "encoding": encoding})
    tables, rejects = [], []
    runner = executor_from_cli(executor, ray_address, ray_workers)
    manifest.executor = runner.describe()
    results = runner.read(list(inputs), mapping=mapping, source=source, on_error=on_error, split=split,
                          delimiter=delimiter, encoding=encoding)
    for path in inputs:
        with console.status(f"reading {path}"):
            result = next(results)
        manifest.add_input(path, rows=result.rows_in, rejected=len(result.rejects))
        tables.append(result.records)
        rejects += result.rejects
    records = pl.concat(tables, how="diagonal_relaxed") if len(tables) > 1 else tables[0]
    write_records(records, output)
    manifest.add_output(output, rows=records.height)
    rejects_path = sidecar(output, "rejects.jsonl")
    if rejects:
        write_rejects(rejects, rejects_path)
        manifest.add_output(rejects_path, rows=len(rejects))
    else:
        rejects_path.unlink(missing_ok=True)  # an older run's rejects would mislead
    manifest.counts = {"in": sum(i["rows"] for i in manifest.inputs), "out": records.height, "rejected": len(rejects)}
    manifest.write(output)
    console.print(f"[green]wrote[/] {records.height} records to {output}"
                  + (f", [yellow]{len(rejects)} rejected[/] (see {rejects_path})" if rejects else ""))


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Scored rows: .parquet or .jsonl.")
@click.option("--judge", "use_judge", is_flag=True, required=True, help="Score with the local LLM judge (the only scorer so far).")
@click.option("--rubric", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML mapping of criterion name to question (default: correctness, helpfulness, format; each 1-5).")
@click.option("--labels", help="Comma-separated allowed labels: the judge also labels each row and says if it agrees.")
@click.option("--model", help="Judge model spec (default: packaged SmolLM2-135M-Instruct).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@engine_options
def score(input: Path, output: Path, use_judge: bool, rubric: Path | None, labels: str | None, model: str | None,
          batch_size: int, engine_choice: EngineChoice) -> None:
    """Score every row with an LLM judge from a rubric; scores become columns.

    Adds judge_<criterion> (1-5), judge_score (their mean) and judge_rationale; with
    --labels also judge_label and judge_agrees. Threshold them with `curate filter`.

    \b
    Example:
      curate score synth.parquet --judge --labels billing,technical,account,shipping -o scored.parquet
    """
    import yaml

    from curate.judge import JudgeConfig, judge

    try:
        config = JudgeConfig(rubric=yaml.safe_load(rubric.read_text()) if rubric else JudgeConfig().rubric,
                             labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None,
                             batch_size=batch_size)
    except (ValueError, AttributeError) as exc:
        raise click.BadParameter(str(exc)) from None
    check_output(output, inputs=[input])
    manifest = Manifest("curate score", parameters={"judge": True, "rubric": config.rubric, "labels": config.labels,
                                                    "batch_size": batch_size})
    read = read_records(input)
    manifest.add_input(input, rows=read.rows_in)
    records = read.records
    engine = engine_choice.open(model=model)
    manifest.parameters["engine"] = engine_choice.describe(engine)
    manifest.models.append(engine.model.describe())
    with engine:
        scored = judge(records, engine, config)
    write_records(scored, output)
    manifest.add_output(output, rows=scored.height)
    manifest.counts = {"in": records.height, "out": scored.height,
                       "unscored": int(scored["judge_score"].null_count())}
    manifest.parameters["usage"] = engine.usage
    manifest.write(output)
    mean = scored["judge_score"].mean()
    console.print(f"[green]scored[/] {scored.height} rows -> {output}; mean judge_score {mean:.2f}"
                  + (f", judge agrees with {scored['judge_agrees'].mean():.0%} of labels" if config.labels else ""))


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="HTML file to write.")
@click.option("--title", help="Page title.")
def report(dataset: Path, output: Path, title: str | None) -> None:
    """Write a static HTML report of how DATASET was curated.

    The funnel, drops by reason with examples, labels and lengths before and after,
    score distributions and the largest duplicate clusters, with plots embedded.

    \b
    Example:
      curate report selected.parquet -o report.html
    """
    from curate.report import write_report

    with console.status("building the report"):
        write_report(dataset, output, title)
    console.print(f"[green]wrote[/] {output}")


@main.command()
@click.argument("row_id", metavar="ID")
@click.argument("dataset", type=click.Path(path_type=Path))
def explain(row_id: str, dataset: Path) -> None:
    """Tell one row's story: every step that touched it, its scores, and why it was kept or dropped.

    DATASET is the last output of a chain of curate commands; the manifests beside
    each output lead back to the raw files. ID may be a unique prefix.

    \b
    Example:
      curate explain 3fa9c1 runs/demo/selected.parquet
    """
    from rich.table import Table

    story = explain_row(row_id, dataset)
    record = story.record
    console.rule(f"row {story.id}")
    for turn in record.get("messages") or []:
        console.print(f"[bold]{turn['role']}[/]: {_short(turn['content'])}")
    if record.get("label") is not None:
        console.print(f"[bold]label[/]: {record['label']}")
    console.print(f"[bold]source[/]: {record.get('source')}")
    table = Table("step", "output", "outcome", "reason", "duplicate of", "similarity", "detail")
    for o in story.outcomes:
        d = o.drop or {}
        sim = d.get("similarity")
        table.add_row(o.command, Path(o.output).name, o.outcome, d.get("reason") or "", (d.get("duplicate_of") or "")[:12],
                      f"{sim:.3f}" if sim is not None else "", d.get("detail") or "")
    console.print(table)
    if story.stage_values:
        console.print("[bold]scores and flags[/]: " + ", ".join(f"{k}={v}" for k, v in story.stage_values.items()))
    if story.duplicate_of:
        dup = story.duplicate_of
        text = " / ".join(_short(t["content"], 80) for t in dup.get("messages") or [])
        console.print(f"[bold]duplicates[/] {dup['id']}: {text}")
    console.print(f"[bold]final[/]: {story.final}")


def _short(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _threshold(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A threshold option: a number, or `off` for None (the check does not run)."""
    if value is None or str(value).strip().lower() == "off":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number nor 'off'") from None


@main.command()
@click.argument("current", type=click.Path(path_type=Path))
@click.option("--against", "reference", required=True, type=click.Path(path_type=Path),
              help="REFERENCE: what CURRENT is compared with, e.g. a run's training set (any dataset the readers take).")
@click.option("--fields", default="auto", show_default=True,
              help="Text compared: comma-separated system/user/assistant/label; auto: user for classification rows, "
                   "else user,assistant.")
@click.option("--max-rows", type=int, default=2000, show_default=True, help="Rows of each side compared (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample, folds and shuffles.")
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds of the domain classifier.")
@click.option("--permutations", type=int, default=100, show_default=True,
              help="Shuffles behind each permutation p-value (at least 1/alpha).")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="Significance level of every test.")
@renamed("--auc-threshold", "--max-auc")
@click.option("--max-auc", "auc_threshold", default="0.65", show_default=True, callback=_threshold, metavar="AUC|off",
              help="Domain-classifier ROC AUC that is drift (with p < alpha).")
@click.option("--mmd/--no-mmd", default=True, show_default=True, help="MMD test on the embeddings (drift when p < alpha).")
@renamed("--label-js-threshold", "--max-label-js")
@click.option("--max-label-js", "label_js_threshold", default="0.1", show_default=True, callback=_threshold, metavar="JS|off",
              help="Jensen-Shannon distance of the label shares that is drift (with chi-square p < alpha).")
@renamed("--length-ks-threshold", "--max-length-ks")
@click.option("--max-length-ks", "length_ks_threshold", default="0.2", show_default=True, callback=_threshold, metavar="KS|off",
              help="KS statistic of the word counts that is drift (with p < alpha).")
@renamed("--language-js-threshold", "--max-language-js")
@click.option("--max-language-js", "language_js_threshold", default="0.1", show_default=True, callback=_threshold, metavar="JS|off",
              help="Jensen-Shannon distance of the language shares that is drift (with chi-square p < alpha).")
@click.option("--top-terms", type=int, default=10, show_default=True, help="Separating terms listed per side.")
@click.option("--examples", type=int, default=5, show_default=True, help="CURRENT rows farthest from REFERENCE listed.")
@report_options('every figure, with a top-level "drift"')
@renamed("--fail-on-drift", "--strict")
@click.option("--strict", "fail_on_drift", is_flag=True, help="Exit with status 3 when drift is found (as `curate audit --strict`).")
def drift(current: Path, reference: Path, fields: str, json_path: Path | None, output: Path | None, title: str | None,
          fail_on_drift: bool, **options) -> None:
    """Tell whether CURRENT drifted from REFERENCE: embeddings, labels, lengths, languages, and what changed.

    Input drift is a domain classifier's cross-validated ROC AUC and an MMD test on the
    embeddings, each with a permutation p-value; label drift the label shares (chi-square,
    Jensen-Shannon). A check finds drift when its figure reaches its threshold and its
    p-value is below --alpha; the verdict is drift when any check finds it.

    \b
    Example:
      curate drift new_tickets.jsonl --against runs/support-tickets/review/accepted.parquet --json drift.json -o drift.html
    """
    from curate.drift import DriftConfig, run_drift, summary_lines
    from curate.report_options import file_path, show_reports
    from curate.text import parse_fields_or_auto

    try:
        config = DriftConfig(fields=parse_fields_or_auto(fields), **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with console.status(f"comparing {current} with {reference}"):
        result = run_drift(current, reference, config, json_path=file_path(json_path), html_path=output, title=title,
                           parameters={"against": str(reference), "json": json_path and str(json_path),
                                       "output": output and str(output), "title": title, "fail_on_drift": fail_on_drift})
    for line in summary_lines(result):
        console.print(line, style="bold red" if line.startswith("DRIFT") else None, highlight=False, markup=False)
    show_reports(json_path, output, result.figures)
    if fail_on_drift and result.drift:
        raise SystemExit(3)


from curate.audit import command as audit_command  # noqa: E402

main.add_command(audit_command, "audit")


@main.command()
@renamed("--llm", "--model")
@click.option("--model", "llm", help="LLM spec: 'default', a local folder or a hub id (env SMALLSET_LLM).")
@click.option("--embedder", help="Embedding model spec (env SMALLSET_EMBEDDER).")
def models(llm: str | None, embedder: str | None) -> None:
    """Resolve the models every stage uses; converts the default LLM on first use.

    \b
    Examples:
      curate models
      curate models --model HuggingFaceTB/SmolLM2-360M-Instruct --embedder ./models/bge-small
    """
    with console.status("resolving models (the first run converts the default LLM, about 30 s)"):
        resolved = [resolve_llm(llm), resolve_embedder(embedder)]
    for model in resolved:
        click.echo(f"{model.role}\t{model.path}\t{model.source}")


from curate.review.cli import review as review_group  # noqa: E402 (standard library only at import)

main.add_command(review_group, "review")

from curate.export import export as export_command  # noqa: E402

main.add_command(export_command, "export")


if __name__ == "__main__":
    main()

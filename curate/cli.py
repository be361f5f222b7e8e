"""The `curate` command: bring raw examples into the record model, and (later) dedup, filter, select."""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl

from curate import __version__
from curate.console import SmallsetGroup, console
from curate.layouts import LAYOUTS, Mapping
from curate.manifest import Manifest
from curate.models import resolve_embedder, resolve_llm
from curate.readers import read_records
from curate.writers import write_records, write_rejects


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
def main() -> None:
    """Curate small, high-quality datasets for fine-tuning.

    Every command reads a dataset and writes a new one, plus a manifest beside it
    (OUTPUT's name with .manifest.json) that records inputs, parameters, versions,
    counts and wall time.
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
def ingest(inputs: tuple[Path, ...], output: Path, layout: str | None, pairs: tuple[str, ...],
           source: str | None, split: str | None, on_error: str) -> None:
    """Read raw examples (JSONL, JSON, CSV, TSV, Parquet, a saved datasets folder) into records.

    Known layouts: chat `messages`; ShareGPT `conversations`; `prompt`/`completion`;
    Alpaca `instruction`/`input`/`output`; `text` + `label`. Unmapped columns go to `meta`.

    \b
    Example:
      curate ingest tickets.csv --map text=body --map label=category -o tickets.parquet
    """
    mapping = Mapping.parse(layout, pairs)
    manifest = Manifest("curate ingest", parameters={"layout": layout, "map": list(pairs), "source": source,
                                                     "split": split, "on_error": on_error})
    tables, rejects = [], []
    for path in inputs:
        with console.status(f"reading {path}"):
            result = read_records(path, mapping, source=source, on_error=on_error, split=split)
        manifest.add_input(path, rows=result.rows_in, rejected=len(result.rejects))
        tables.append(result.records)
        rejects += result.rejects
    records = pl.concat(tables, how="diagonal_relaxed") if len(tables) > 1 else tables[0]
    write_records(records, output)
    manifest.add_output(output, rows=records.height)
    if rejects:
        rejects_path = output.with_name(output.name.split(".")[0] + ".rejects.jsonl")
        write_rejects(rejects, rejects_path)
        manifest.add_output(rejects_path, rows=len(rejects))
    manifest.counts = {"in": sum(i["rows"] for i in manifest.inputs), "out": records.height, "rejected": len(rejects)}
    manifest.write(output)
    console.print(f"[green]wrote[/] {records.height} records to {output}"
                  + (f", [yellow]{len(rejects)} rejected[/] (see {rejects_path})" if rejects else ""))


@main.command()
@click.option("--llm", help="LLM spec: 'default', a local folder or a hub id (env SMALLSET_LLM).")
@click.option("--embedder", help="Embedding model spec (env SMALLSET_EMBEDDER).")
def models(llm: str | None, embedder: str | None) -> None:
    """Resolve the models every stage uses; converts the default LLM on first use."""
    with console.status("resolving models (the first run converts the default LLM, about 30 s)"):
        resolved = [resolve_llm(llm), resolve_embedder(embedder)]
    for model in resolved:
        click.echo(f"{model.role}\t{model.path}\t{model.source}")


if __name__ == "__main__":
    main()

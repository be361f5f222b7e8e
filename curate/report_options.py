"""The options of every command that writes a report (`curate drift`, `curate audit`, `curate review status`).

One spelling per concept: `--json PATH` writes every figure as JSON (bare `--json`, or `--json -`,
prints it on stdout instead, for a pipe), `-o/--output` writes the HTML report with the plots,
`--title` names it, `--embedder` picks the embedding model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

STDOUT = "-"


def json_option(what: str) -> Callable:
    """`--json [PATH]`: write `what` to PATH; without a path (or `-`), print it on stdout."""
    return click.option("--json", "json_path", is_flag=False, flag_value=STDOUT, default=None, metavar="[PATH]",
                        type=click.Path(path_type=Path, allow_dash=True),
                        help=f"Write {what} as JSON to PATH; bare --json (or --json -) prints it on stdout.")


def report_options(what: str) -> Callable:
    """--embedder, --json [PATH], -o/--output and --title, as `curate drift` and `curate audit` take them."""
    options = [
        click.option("--embedder", help="Embedding model spec (default: packaged all-MiniLM-L6-v2)."),
        json_option(what),
        click.option("-o", "--output", type=click.Path(path_type=Path), help="HTML report with the plots."),
        click.option("--title", help="Title of the HTML report."),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def to_stdout(path: Path | None) -> bool:
    return path is not None and str(path) == STDOUT


def file_path(path: Path | None) -> Path | None:
    """The file to write, None when there is none or the JSON goes to stdout."""
    return None if path is None or to_stdout(path) else path


def echo_json(data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """JSON on stdout (the console's messages are on stderr, so a pipe gets only this)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=default))


def show_reports(json_path: Path | None, html_path: Path | None, figures: dict[str, Any]) -> None:
    """After a report command wrote its files: the figures on stdout for bare --json, a line per file written."""
    from curate.console import console
    from curate.drift import json_default

    if to_stdout(json_path):
        echo_json(figures, default=json_default)
    for path in (file_path(json_path), html_path):
        if path is not None:
            console.print(f"[green]wrote[/] {path}")

"""A step's `curate` command, made from its Config: options, validation, read-run-write and manifest, written once.

`step_command(StepClass)` builds the click command: INPUT, `-o/--output` and one option per
Config field declared with `curate.step.option`. Running it checks the options (a bad value
names its option, before any work), reads INPUT, lets the step read its side inputs, runs it
and writes the kept rows, the drops table and the manifest. Recipes validate their options
against the same click command, so a recipe key is checked exactly like a flag.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import polars as pl
from rich.markup import escape

from curate.console import console
from curate.drops import write_drops
from curate.errors import InputError
from curate.executor import EXECUTOR_ENV, EXECUTORS, LOCAL, open_executor, using
from curate.manifest import Manifest
from curate.ray_cluster import ADDRESS_ENV, RayOptions
from curate.readers import read_records
from curate.renamed_flags import RenamedOption
from curate.step import _UNSET, Step, StepResult, options, parameters, side_inputs
from curate.writers import check_output, write_records


def step_command(step_class: type[Step]) -> click.Command:
    """The click command of a step (its help is the Step class docstring)."""
    params: list[click.Parameter] = [
        click.Argument(["input"], type=click.Path(path_type=Path)),
        click.Option(["-o", "--output"], required=True, type=click.Path(path_type=Path),
                     help="Kept rows: .parquet or .jsonl."),
    ]
    made = [(_click_option(f, opt), opt) for f, opt in options(step_class.Config)]
    params += [param for param, _ in made]
    params += [RenamedOption(old, param) for param, opt in made for old in opt.renamed_from]  # hidden old names
    params += executor_params()

    def callback(input: Path, output: Path, executor: str, ray_address: str | None, ray_workers: int | None,
                 **values: Any) -> None:
        config = build_config(step_class, values)
        run_step(step_class(config), input, output, executor=executor_from_cli(executor, ray_address, ray_workers))

    return click.Command(step_class.name, params=params, callback=callback, help=step_class.help())


def _click_option(f: dataclasses.Field, opt) -> click.Option:
    default = opt.cli_default
    if default is _UNSET:
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None and opt.off is not _UNSET:
            default = opt.off
    kind = opt.type
    is_flag = kind is None and isinstance(default, bool)
    if opt.dataset and kind is None:
        kind = click.Path(path_type=Path)
    if kind is None and default is not None and not is_flag and not opt.multiple:
        kind = type(default) if isinstance(default, (int, float, str)) else None
    flag = opt.flag or opt.long(f.name)
    if is_flag and not opt.flag:
        flag = f"{flag}/--no-{flag[2:]}"
    if opt.multiple and default is not None and not isinstance(default, (list, tuple)):
        default = None
    return click.Option([flag, *([opt.short] if opt.short else []), f.name], type=kind, default=default if not opt.multiple else (default or ()),
                        multiple=opt.multiple, is_flag=is_flag or None, required=opt.required, metavar=opt.metavar,
                        show_default=opt.show_default if default not in (None, ()) else False, help=opt.help,
                        callback=opt.callback)


def build_config(step_class: type[Step], values: dict[str, Any]) -> Any:
    """The step's Config from command-line values: `off` values become None, `parse` converts; a ValueError
    becomes a usage error (exit 2) before anything is read."""
    kwargs = {}
    for f, opt in options(step_class.Config):
        if f.name not in values:
            continue
        value = values[f.name]
        if opt.multiple:
            value = tuple(value)
            if not value:
                continue  # the field's own default
        if opt.off is not _UNSET and value == opt.off:
            value = None
        elif opt.parse is not None and value is not None:
            try:
                value = opt.parse(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=opt.long(f.name)) from None
        kwargs[f.name] = value
    try:
        return step_class.Config(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def executor_params() -> list[click.Option]:
    """--executor, --ray-address and --ray-workers: where a step's heavy work runs (`curate.executor`)."""
    return [
        click.Option(["--executor"], type=click.Choice(EXECUTORS), default="local", envvar=EXECUTOR_ENV, show_default=True,
                     help="Where the work runs: this process, or a Ray cluster (RAY_ADDRESS or --ray-address, "
                          "else a local Ray instance). The results are the same."),
        click.Option(["--ray-address"], envvar=ADDRESS_ENV, metavar="ADDRESS",
                     help="With --executor ray: the cluster to join (HOST:PORT, ray://HOST:10001 or auto)."),
        click.Option(["--ray-workers"], type=click.IntRange(min=1), envvar="SMALLSET_RAY_WORKERS", metavar="N",
                     help="With --executor ray: parallel tasks or actors (default: one per CPU of the cluster)."),
    ]


def executor_options(function):
    """Decorator of a command's function, like `click.option`: it gets `executor_params()` (arguments
    `executor`, `ray_address`, `ray_workers`)."""
    memo = function.__dict__.setdefault("__click_params__", [])
    memo.extend(reversed(executor_params()))  # click adds decorator params in reverse
    return function


def executor_from_cli(name: str, address: str | None, workers: int | None):
    """The executor the flags ask for (Ray is imported only for `ray`)."""
    if name == "local":
        return LOCAL
    return open_executor(name, RayOptions(address=address, workers=workers))


def run_step(step: Step, input: Path, output: Path, executor: Any = LOCAL) -> StepResult:
    """Read INPUT, run the step on `executor`, write OUTPUT, its drops and its manifest; say what happened."""
    check_output(output, inputs=[input, *side_inputs(step.config)])
    manifest = Manifest(f"curate {step.name}", parameters=parameters(step.config))
    manifest.models += step.models()
    manifest.executor = executor.describe()

    inputs = _Inputs(manifest)
    records = inputs.records(input)  # first: manifests name the step's data as their first input
    try:
        with using(executor):
            step.prepare(inputs)
            where = "" if executor is LOCAL else f" on {executor.name} ({executor.workers} workers)"
            with console.status(f"{step.name}: {records.height} rows{where}"):
                result = executor.run(step, records)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    manifest.parameters.update(result.parameters)
    for line in result.messages:
        console.print(escape(line), highlight=False, soft_wrap=True)
    for line in result.warnings:
        console.print(f"[bold red]warning:[/] [yellow]{escape(line)}[/]", highlight=False)
    save(manifest, output, result, records.height, drops=step.drops_rows)
    return result


class _Inputs:
    """`curate.step.SideInputs` for a command: what it reads goes into its manifest."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def records(self, path: Path) -> pl.DataFrame:
        result = read_records(path)
        self.manifest.add_input(path, rows=result.rows_in)
        return result.records

    def file(self, path: Path) -> Path:
        if not Path(path).is_file():
            raise InputError(path, "no such file")
        self.manifest.add_input(path)
        return Path(path)


def save(manifest: Manifest, output: Path, result: StepResult, rows_in: int, *, drops: bool = True) -> None:
    """Write the drops table and the kept rows, then the manifest (counts: in, out, dropped by reason, the
    step's own and the embedding cache's), and print the one-line summary."""
    drops_file = None
    if drops:
        drops_file = write_drops(result.drops, output)
    write_records(result.kept, output)
    manifest.add_output(output, rows=result.kept.height)
    if drops_file is not None:
        manifest.add_output(drops_file, rows=result.drops.height)
    dropped = result.drops
    by_reason = dict(dropped.group_by("reason").len().sort("len", descending=True).iter_rows()) if dropped.height else {}
    manifest.counts = {"in": rows_in, "out": result.kept.height}
    if drops:
        manifest.counts |= {"dropped": dropped.height, **{f"dropped_{k}": v for k, v in by_reason.items()}}
    manifest.counts |= {**result.counts, **embedding_counts()}
    manifest.write(output)
    if drops:
        summary = ", ".join(f"{v} {k}" for k, v in by_reason.items()) or "none"
        console.print(f"[green]kept[/] {result.kept.height} of {rows_in} rows -> {escape(str(output))}; dropped: "
                      f"{summary}{escape(result.note)} (see {escape(drops_file.name)})")
    else:
        console.print(f"[green]wrote[/] {result.kept.height} rows -> {escape(str(output))}{escape(result.note)}")


def embedding_counts() -> dict[str, int]:
    """What the shared embedding cache answered during this command (nothing when it embedded nothing)."""
    import sys

    embeddings = sys.modules.get("curate.embeddings")  # loaded only by steps that embed
    stats = getattr(embeddings, "last_stats", None)
    if stats is None or not stats.texts:
        return {}
    return {"embedded_texts": stats.texts, "embedding_cache_hits": stats.hits, "embedding_cache_misses": stats.misses}

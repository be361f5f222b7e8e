"""The step contract: what every curate step is, so that its command, recipe keys and manifest come from one place.

A step has a name, one Config dataclass and `run(records) -> StepResult`. Each Config field
that is declared with `option(...)` is at once a field of the Python API, a click option of
the step's `curate` command (and so a recipe key, checked by `recipes.options`), and a
parameter in the manifest. The shared wrapper that reads the input, runs the step and writes
the output, its drops and its manifest lives in `curate.step_cli`; a step never writes files.

A new step is one module: a Config dataclass, a `Step` subclass, and an entry point in the
`smallset.steps` group (see `curate.plugins`). datatrove's `PipelineStep`/`BaseFilter` and
TRL's `SFTConfig` are the models.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import polars as pl

from curate.drops import empty_drops

_UNSET = object()


@dataclass(frozen=True)
class Option:
    """How a Config field appears on the command line (it is a recipe key and a manifest parameter by the same name).

    `flag` overrides the option's spelling (default `--field-name`; `--x/--no-x` for a switch);
    `parse` turns the command-line value into the field's value (e.g. "a,b" -> ("a", "b")) and
    `cli_default` is what --help shows and the command starts from; `off` is the command-line
    value that means None (0 turns `--min-tokens` off); `dataset` marks a path the step reads
    besides its input (`Step.prepare` reads it, the manifest lists it as an input); `renamed_from`
    lists old spellings that still work, hidden, for one release (`curate.renamed_flags`).
    """

    help: str
    flag: str | None = None
    short: str | None = None
    type: Any = None
    multiple: bool = False
    metavar: str | None = None
    required: bool = False
    parse: Callable[[Any], Any] | None = None
    cli_default: Any = _UNSET
    off: Any = _UNSET
    show_default: bool | str = True
    dataset: bool = False
    callback: Callable | None = None
    renamed_from: tuple[str, ...] = ()

    def long(self, field_name: str) -> str:
        return (self.flag or "--" + field_name.replace("_", "-")).split("/")[0]

    def key(self, field_name: str) -> str:
        """The manifest parameter (and recipe key, with dashes): the long option without its dashes."""
        return self.long(field_name)[2:].replace("-", "_")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           **how: Any) -> Any:
    """A Config field that is also a command-line option (see `Option` for `how`)."""
    metadata = {"option": Option(help=help, **how)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def options(config_class: type) -> list[tuple[dataclasses.Field, Option]]:
    """The Config's fields that are options, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(config_class) if "option" in f.metadata]


def jsonable(value: Any) -> Any:
    """A parameter as the manifest stores it: tuples as lists, paths as strings, dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def parameters(config: Any) -> dict[str, Any]:
    """Every option of `config` by its manifest name, as the step ran with it."""
    return {opt.key(f.name): jsonable(getattr(config, f.name)) for f, opt in options(type(config))}


def side_inputs(config: Any) -> list[Path]:
    """The files the options name (`dataset=True`): a step's output may not be one of them."""
    found = []
    for f, opt in options(type(config)):
        value = getattr(config, f.name)
        if opt.dataset and value:
            found += [Path(v) for v in value] if isinstance(value, (list, tuple)) else [Path(value)]
    return found


@dataclass
class StepResult:
    """What a step returns: the rows it keeps, one drops row per row it removed, and what to report."""

    kept: pl.DataFrame
    drops: pl.DataFrame = field(default_factory=empty_drops)
    counts: dict[str, int] = field(default_factory=dict)
    """Step-specific counts for the manifest (the wrapper adds in, out, dropped and dropped_<reason>)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """What the step chose at run time (e.g. `stratify_mode`), added to the manifest's parameters."""
    messages: list[str] = field(default_factory=list)
    """Lines printed before the summary (plain text, not markup)."""
    warnings: list[str] = field(default_factory=list)
    """Lines printed loudly: something the user must look at."""
    note: str = ""
    """Appended to the one-line summary (what the step did besides dropping)."""


class SideInputs(Protocol):
    """How a step reads the files its options name; each one is listed in the manifest."""

    def records(self, path: Path) -> pl.DataFrame: ...

    def file(self, path: Path) -> Path: ...


class Step:
    """One curate step. Subclasses set `name` and `Config` and implement `run`; the class docstring is the command's help.

    `models()` names the models the step loads (for the manifest), `prepare(inputs)` reads the
    files its options point at (`inputs.records(path)` returns a dataset's records,
    `inputs.file(path)` a plain file's path; both list it as an input of the manifest), and
    `run(records)` does the work without touching files. A ValueError
    from `prepare` or `run` is the input's fault: the command reports it against the input.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    drops_rows: ClassVar[bool] = True
    """False for steps that only add columns (scores): their command writes no drops table."""
    row_local: ClassVar[bool] = False
    """True when each row's fate depends on that row alone (filters, scores): an executor may then run
    the step on blocks of rows in parallel and `combine` the blocks' results."""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def models(self) -> list[dict]:
        return []

    def prepare(self, inputs: SideInputs) -> None:
        """Read the side inputs the options name (evaluation sets, a test set, a learning curve)."""

    def run(self, records: pl.DataFrame) -> StepResult:
        raise NotImplementedError

    def combine(self, parts: list[StepResult]) -> StepResult:
        """One result from the results of consecutive blocks (a row-local step's, see `row_local`): rows and
        drops in order, counts added up, the first block's parameters, each distinct message once."""
        def once(lines):
            return list(dict.fromkeys(line for part in parts for line in lines(part)))

        counts: dict[str, int] = {}
        for part in parts:
            for key, value in part.counts.items():
                counts[key] = counts.get(key, 0) + value
        return StepResult(
            kept=pl.concat([p.kept for p in parts], how="vertical_relaxed"),
            drops=pl.concat([p.drops for p in parts], how="vertical_relaxed"),
            counts=counts, parameters=parts[0].parameters, messages=once(lambda p: p.messages),
            warnings=once(lambda p: p.warnings), note=parts[0].note)

    @classmethod
    def help(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or cls.name)


# --- options several steps share ----------------------------------------------------------------


def unit_interval(ctx, param, value):
    """click callback: a share in (0, 1]."""
    import click

    if value is not None and not 0 < value <= 1:
        raise click.BadParameter(f"{value} is outside (0, 1]", param_hint=param.opts[0])
    return value


def fields_option(default: tuple[str, ...] | None = None, help: str | None = None) -> Any:
    """Which parts of a record a step compares or embeds (`curate.text.FIELDS`), given as "user,assistant"."""
    from curate.text import DEFAULT_FIELDS, FIELDS, parse_fields

    default = DEFAULT_FIELDS if default is None else default
    return option(default, help or f"What to compare: comma-separated {'/'.join(FIELDS)}.",
                  parse=parse_fields, cli_default=",".join(default))


def normalize_option() -> Any:
    """How compared text is normalized (`curate.text.NORMALIZATIONS`), given as "lower,punct" or "none"."""
    from curate.text import BEFORE_NORMALIZATION, DEFAULT_NORMALIZATION, NORMALIZATIONS, parse_normalization

    return option(DEFAULT_NORMALIZATION, f"Normalization of compared text besides NFKC and whitespace: comma-separated "
                  f"{'/'.join(NORMALIZATIONS)}, or none ({','.join(BEFORE_NORMALIZATION)}: before 0.3).",
                  parse=parse_normalization, cli_default=",".join(DEFAULT_NORMALIZATION))


def embedder_option(help: str = "Embedding model spec (default: packaged all-MiniLM-L6-v2).") -> Any:
    return option(None, help)


def embedder_model(spec: str | None) -> list[dict]:
    """The manifest's model entry for an embedder spec."""
    from curate.models import resolve_embedder

    return [resolve_embedder(spec).describe()]

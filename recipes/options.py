"""Recipe options to command-line arguments, checked against the command's own click options.

The commands are the single source of truth for option names, types and defaults: a recipe
key is the option's long name without dashes (`score-column` or `score_column`), and its
value is converted by the option's click type, so a wrong type or an unknown key fails
while the recipe is validated, naming the key, not halfway through a run. A key under an
option's old name (`num` for `size`, `curate.renamed_flags`) still works, with a note.
"""

from __future__ import annotations

from typing import Any

import click

from curate.errors import InputError
from curate.renamed_flags import REMOVED_IN, RenamedOption

_noted: set[str] = set()


def command_args(command: click.Command, options: dict[str, Any], *, where: str, path,
                 reserved: tuple[str, ...] = ()) -> list[str]:
    """The argv tail for `options`; `reserved` names options the runner sets itself."""
    by_key: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("--"):
                    by_key[opt[2:]] = param
            if not isinstance(param, RenamedOption):
                by_key.setdefault(param.name.replace("_", "-"), param)
    args: list[str] = []
    for raw_key, value in (options or {}).items():
        key = str(raw_key).replace("_", "-")
        param = by_key.get(key)
        field = f"{where}.{raw_key}"
        if isinstance(param, RenamedOption):
            param = _renamed(param, path, field)
        if param is None or param.name in {"help"}:
            known = sorted({p.opts[-1].lstrip("-") for p in command.params if isinstance(p, click.Option)
                            and p.name not in reserved + ("help",) and not p.hidden})
            raise InputError(path, f"'{command.name}' has no option '{raw_key}'; its options: {', '.join(known)}", field=field)
        if param.name in reserved:
            raise InputError(path, f"'{raw_key}' is set by the recipe runner, not in the recipe", field=field)
        args += _render(param, value, path=path, field=field)
    return args


def _renamed(param: RenamedOption, path, field: str) -> click.Option:
    """The option an old key stands for; a note on stderr, once per key."""
    old, new = param.opts[0][2:], param.new_flag[2:]
    note = f"note: {path}, field '{field}': '{old}' is now '{new}'; the old key goes in {REMOVED_IN}"
    if note not in _noted:
        _noted.add(note)
        click.echo(note, err=True)
    return param.target


def _render(param: click.Option, value: Any, *, path, field: str) -> list[str]:
    flag = next(o for o in param.opts if o.startswith("--")) if any(o.startswith("--") for o in param.opts) else param.opts[0]
    if param.is_flag:
        if not isinstance(value, bool):
            raise InputError(path, f"expects true or false, got {value!r}", field=field)
        if value:
            return [flag]
        if param.secondary_opts:
            return [param.secondary_opts[0]]
        return []
    if isinstance(value, dict):  # FIELD=COLUMN style options: {text: body} -> --map text=body
        values = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, list):
        values = [str(v) for v in value] if param.multiple else [",".join(str(v) for v in value)]
    else:
        values = ["true" if value is True else "false" if value is False else str(value)]
    if len(values) > 1 and not param.multiple:
        raise InputError(path, f"takes one value, got {len(values)}", field=field)
    out: list[str] = []
    for v in values:
        try:
            param.type.convert(v, param, None)
        except click.BadParameter as exc:
            raise InputError(path, exc.format_message(), field=field) from None
        out += [flag, v]
    return out

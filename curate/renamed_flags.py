"""Old flag names kept for one release: a renamed option still answers to its old name, hidden from --help.

The four CLIs use one name per concept (`--model` for the LLM, `-n/--size` for how many rows
a command produces, SQL conditions as `--where`). A flag that got its new name keeps the old
one as a hidden option: the old name works, prints a one-line note on stderr, and a recipe
key under the old name is rendered with the new flag (`recipes.options`). click cannot hide
one spelling of an option, so the old name is an option of its own that hands its value to
the new one before that is processed (click processes options given on the command line
first, and every option reads the same parsed values).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from curate import __version__


def _next_release(version: str) -> str:
    found = re.match(r"(\d+)\.(\d+)", version)
    return f"smallset {found[1]}.{int(found[2]) + 1}" if found else "the next release"


REMOVED_IN = _next_release(__version__)
"""The release that drops the old names: they work, with a note, for the one this is."""


class RenamedOption(click.Option):
    """A hidden option under the old name of `target`: its value becomes the target's, with a note on stderr."""

    def __init__(self, old: str, target: click.Option) -> None:
        self.target = target
        like = {"is_flag": True, "flag_value": target.flag_value} if target.is_flag else {"type": target.type}
        super().__init__([old, "renamed_" + old.lstrip("-").replace("-", "_")], multiple=target.multiple,
                         nargs=target.nargs, expose_value=False, hidden=True, help=f"Old name of {self.new_flag}.",
                         **like)

    @property
    def new_flag(self) -> str:
        return self.target.opts[0] if self.target.opts[0].startswith("--") else self.target.opts[-1]

    def note(self) -> str:
        return f"note: {self.opts[0]} is now {self.new_flag}; the old name goes in {REMOVED_IN}"

    def handle_parse_result(self, ctx: click.Context, opts: Any, args: list[str]) -> tuple[Any, list[str]]:
        if self.name in opts:
            if self.target.name in opts and not ctx.resilient_parsing:
                raise click.UsageError(f"{self.opts[0]} is the old name of {self.new_flag}: give only {self.new_flag}",
                                       ctx=ctx)
            if not ctx.resilient_parsing:
                click.echo(self.note(), err=True)
            opts[self.target.name] = opts.pop(self.name)
        return super().handle_parse_result(ctx, opts, args)


def _target(params: list[click.Parameter], new: str) -> click.Option:
    for param in params:
        if isinstance(param, click.Option) and new in param.opts + param.secondary_opts:
            return param
    raise LookupError(f"no option {new} to rename to")  # a programming error: the decorator is misplaced


def renamed(old: str, new: str) -> Callable[[Callable], Callable]:
    """Decorator of a command's function, above the `click.option` of `new`: `old` keeps working, hidden."""
    def decorate(function: Callable) -> Callable:
        params = function.__dict__.setdefault("__click_params__", [])
        params.append(RenamedOption(old, _target(params, new)))
        return function

    return decorate


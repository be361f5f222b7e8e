"""What every smallset CLI shares: a stderr console and errors printed without tracebacks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from curate.errors import SmallsetError

# Progress and status go to stderr, so that stdout stays clean for data and replies.
console = Console(stderr=True)


class SmallsetGroup(click.Group):
    """A click group that turns `SmallsetError` into a clean one-line error (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SmallsetError as exc:
            raise click.ClickException(str(exc)) from None


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same as `SmallsetGroup`, for a single command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SmallsetError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper

"""Plugins: curate steps, filter rules, synth strategies and teacher engines found through entry points.

A plugin is a package that declares, in its pyproject.toml,

    [project.entry-points."smallset.steps"]
    shout = "smallset_shout:Shout"        # a curate.step.Step subclass: `curate shout` appears

and the same for `smallset.rules` (a `curate.rules.Rule` subclass: `curate filter` gains its
options and reason codes), `smallset.strategies` (a synth strategy) and `smallset.engines` (a
teacher engine). smallset registers its own built-ins in the same groups, and keeps a table of
them here so that a checkout that was never pip-installed still works. Nothing is imported
until it is used: `curate ingest` does not load the dedup step. simonw/llm's plugins are the model.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from curate.errors import SmallsetError

GROUPS = {"steps": "smallset.steps", "rules": "smallset.rules", "strategies": "smallset.strategies",
          "engines": "smallset.engines"}

BUILTINS: dict[str, dict[str, str]] = {
    "steps": {
        "dedup": "curate.dedup.pipeline:Dedup",
        "decontaminate": "curate.decontaminate:Decontaminate",
        "filter": "curate.filters:Filter",
        "check-labels": "curate.label_check:CheckLabels",
        "select": "curate.select:Select",
    },
    "rules": {
        "role_order": "curate.rules.structure:RoleOrder",
        "empty_response": "curate.rules.structure:EmptyResponse",
        "label": "curate.rules.labels:AllowedLabels",
        "scores": "curate.rules.labels:MinScores",
        "placeholder": "curate.rules.text:Placeholders",
        "truncated": "curate.rules.text:Truncated",
        "symbols": "curate.rules.text:Symbols",
        "repetition": "curate.rules.text:Repetition",
        "user": "curate.rules.user:UserRules",
        "tokens": "curate.rules.tokens:Tokens",
        "language": "curate.rules.language:Language",
    },
}
"""What curate itself registers (pyproject.toml declares the same entry points). synth's strategies and
the engines pass their own built-ins to `registered`, so that curate names nothing of synth's."""


class PluginError(SmallsetError):
    """A plugin cannot be loaded; the message names it and where it came from."""


def registered(kind: str, builtins: dict[str, str] | None = None) -> dict[str, str]:
    """name -> "module:attribute" for every `kind` (steps, rules, strategies, engines): built-ins, then plugins.

    `builtins` are the owner's own (curate's steps and rules by default). A plugin may not take a
    built-in's name: that would change what a recipe means without a word.
    """
    return dict(_registered(kind, tuple(sorted((builtins if builtins is not None else BUILTINS.get(kind, {})).items()))))


@cache
def _registered(kind: str, builtins: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    found = dict(builtins)
    for ep in entry_points(group=GROUPS[kind]):
        if ep.name in found and found[ep.name] != ep.value:
            dist = ep.dist.name if ep.dist else "?"
            raise PluginError(f"plugin {dist!r} registers {kind[:-1]} {ep.name!r} ({ep.value}), "
                              f"which is smallset's own ({found[ep.name]}); rename it")
        found[ep.name] = ep.value
    return tuple(found.items())


def load(kind: str, name: str, builtins: dict[str, str] | None = None) -> object:
    """Import the object registered as `name`; a broken plugin is named, not a traceback."""
    known = registered(kind, builtins)
    target = known.get(name)
    if target is None:
        raise PluginError(f"no {kind[:-1]} named {name!r}; known: {', '.join(sorted(known))}")
    module_name, _, attribute = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"{kind[:-1]} {name!r} ({target}) cannot be loaded: {type(exc).__name__}: {exc}") from None
    return obj


def load_all(kind: str, builtins: dict[str, str] | None = None) -> dict[str, object]:
    return {name: load(kind, name, builtins) for name in registered(kind, builtins)}


def clear_cache() -> None:
    """Forget what was found (after installing a plugin in the running process)."""
    _registered.cache_clear()

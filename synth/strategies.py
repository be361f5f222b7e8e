"""Synth strategies: how the teacher is asked for one planned sample. One class per strategy; plugins add more.

* taxonomy: the axis values say what to write; no seed is shown (structured output
  fixes the format), so small teachers cannot echo the seeds.
* self_instruct: a few seeds, rotated per sample, as examples to go beyond (Self-Instruct).
* evolve: a seed rewritten by one Evol-Instruct operation (deepen, concretize, add a
  constraint, make it more realistic).

A strategy writes the user message of the request (`synth.prompts` adds the system
message with the output schema). A plugin registers a `Strategy` subclass in the
`smallset.strategies` entry-point group; a task file names it as `strategy:`.
Seed examples are shown to the teacher but never copied into the output: the privacy
guard checks generated samples against them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from curate.plugins import load, registered

if TYPE_CHECKING:
    from synth.task import TaskSpec

EVOLUTIONS = (
    "harder: it needs more reasoning or knowledge to handle",
    "more specific: replace general wording with concrete details",
    "constrained: add one realistic constraint or requirement",
    "more realistic: phrase it the way a real person would, with natural imperfections",
)
EXAMPLES_SHOWN = 3

BUILTINS = {
    "taxonomy": "synth.strategies:Taxonomy",
    "self_instruct": "synth.strategies:SelfInstruct",
    "evolve": "synth.strategies:Evolve",
}


class Strategy:
    """How to ask for planned sample `index` with attribute values `axes`. `needs_seeds`: the task must give seeds."""

    name: ClassVar[str]
    needs_seeds: ClassVar[bool] = False

    def request(self, task: TaskSpec, index: int, axes: dict[str, str]) -> str:
        raise NotImplementedError


def _attributes(axes: dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in axes.items())


class Taxonomy(Strategy):
    """Ask for a new sample with these attribute values; no seed is shown."""

    name = "taxonomy"

    def request(self, task: TaskSpec, index: int, axes: dict[str, str]) -> str:
        user = "Write one new sample."
        if axes:
            user += f"\nIt must have these attributes:\n{_attributes(axes)}"
        return user + self.shown(task, index)

    def shown(self, task: TaskSpec, index: int) -> str:
        return ""


class SelfInstruct(Taxonomy):
    """Taxonomy, plus a few seeds (rotated per sample) as examples to go beyond."""

    name = "self_instruct"
    needs_seeds = True

    def shown(self, task: TaskSpec, index: int) -> str:
        examples = "\n".join(json.dumps(e, ensure_ascii=False) for e in _examples(task, index, EXAMPLES_SHOWN))
        return f"\n\nGo beyond these examples: write something different:\n{examples}" if examples else ""


class Evolve(Strategy):
    """Rewrite a seed by one Evol-Instruct operation, cycling through the seeds, then the operations."""

    name = "evolve"

    def request(self, task: TaskSpec, index: int, axes: dict[str, str]) -> str:
        base = task.seeds[index % len(task.seeds)] if task.seeds else {}
        evolution = EVOLUTIONS[(index // max(len(task.seeds), 1)) % len(EVOLUTIONS)]
        user = (
            f"Rewrite this sample so that it is {evolution}. Keep it a valid sample of the task.\n"
            f"Sample: {json.dumps(base, ensure_ascii=False)}"
        )
        if axes:
            user += f"\nIt must have these attributes:\n{_attributes(axes)}"
        return user


def _examples(task: TaskSpec, index: int, count: int) -> list[dict[str, Any]]:
    if not task.seeds:
        return []
    return [task.seeds[(index + k) % len(task.seeds)] for k in range(min(count, len(task.seeds)))]


def strategy_names() -> list[str]:
    return sorted(registered("strategies", BUILTINS))


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name` (built-in or plugin)."""
    return load("strategies", name, BUILTINS)()

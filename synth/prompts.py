"""Prompts: one chat per planned sample, by strategy.

* taxonomy: the axis values say what to write; no seed is shown (structured output
  fixes the format), so small teachers cannot echo the seeds.
* self_instruct: a few seeds, rotated per sample, as examples to go beyond (Self-Instruct).
* evolve: a seed rewritten by one Evol-Instruct operation (deepen, concretize, add a
  constraint, make it more realistic).

Seed examples are shown to the teacher but never copied into the output: the
privacy guard checks generated samples against them.
"""

from __future__ import annotations

import json
from typing import Any

from synth.task import TaskSpec

EVOLUTIONS = (
    "harder: it needs more reasoning or knowledge to handle",
    "more specific: replace general wording with concrete details",
    "constrained: add one realistic constraint or requirement",
    "more realistic: phrase it the way a real person would, with natural imperfections",
)
EXAMPLES_SHOWN = 3


def _schema_hint(task: TaskSpec) -> str:
    lines = []
    for name, spec in task.output.fields.items():
        hint = f'- "{name}" ({spec.get("type", "string")})'
        if spec.get("description"):
            hint += f": {spec['description']}"
        if spec.get("enum"):
            hint += f"; one of {', '.join(map(str, spec['enum']))}"
        lines.append(hint)
    return "\n".join(lines)


def system_prompt(task: TaskSpec) -> str:
    return (
        "You write synthetic training data.\n"
        f"{task.instructions}\n\n"
        "Answer with exactly one JSON object with these keys:\n"
        f"{_schema_hint(task)}"
    )


def _examples(task: TaskSpec, index: int, count: int) -> list[dict[str, Any]]:
    if not task.seeds:
        return []
    return [task.seeds[(index + k) % len(task.seeds)] for k in range(min(count, len(task.seeds)))]


def build_chat(task: TaskSpec, index: int, axes: dict[str, str]) -> list[dict[str, str]]:
    """The conversation that asks the teacher for planned sample `index`."""
    attributes = "\n".join(f"- {k}: {v}" for k, v in axes.items())
    if task.strategy == "evolve":
        base = task.seeds[index % len(task.seeds)] if task.seeds else {}
        evolution = EVOLUTIONS[(index // max(len(task.seeds), 1)) % len(EVOLUTIONS)]
        user = (
            f"Rewrite this sample so that it is {evolution}. Keep it a valid sample of the task.\n"
            f"Sample: {json.dumps(base, ensure_ascii=False)}"
        )
    else:
        shown = ""
        if task.strategy == "self_instruct":
            shown = "\n".join(json.dumps(e, ensure_ascii=False) for e in _examples(task, index, EXAMPLES_SHOWN))
        user = "Write one new sample."
        if attributes:
            user += f"\nIt must have these attributes:\n{attributes}"
        if shown:
            user += f"\n\nGo beyond these examples: write something different:\n{shown}"
    if attributes and task.strategy == "evolve":
        user += f"\nIt must have these attributes:\n{attributes}"
    return [{"role": "system", "content": system_prompt(task)}, {"role": "user", "content": user}]

"""Prompts: one chat per planned sample: the task's system message and the strategy's request (`synth.strategies`)."""

from __future__ import annotations

from synth.strategies import get_strategy
from synth.task import TaskSpec


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


def build_chat(task: TaskSpec, index: int, axes: dict[str, str]) -> list[dict[str, str]]:
    """The conversation that asks the teacher for planned sample `index`."""
    user = get_strategy(task.strategy).request(task, index, axes)
    return [{"role": "system", "content": system_prompt(task)}, {"role": "user", "content": user}]

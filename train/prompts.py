"""Evaluation prompts laid out as the training records are, and the k-shot prompting baseline.

A test row is cut where a training row is: everything before its last assistant turn is
the prompt, that turn is the gold answer. The prompt keeps the training records' layout:
when every training row opens with the same system message (a task instruction), test
rows without one get it too, so the adapter sees what it was trained on and the base
model gets the same instruction. The chat template itself is applied by the engine and
checked against training's rendering in `train.evaluate`.

The k-shot baseline puts k training rows before the test prompt as earlier turns of the
same conversation (each shot's user turns and reply), after the shared system message.
Shots are chosen deterministically from the seed: for classification one row per label
in turn (so every label is shown before any is shown twice), then shuffled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from train.errors import TrainError
from train.metrics import CLASSIFICATION, EXACT, FREE

MAX_DEFAULT_SHOTS = 8
Messages = list[dict[str, str]]


@dataclass
class Example:
    """One row cut for evaluation: the prompt turns and the reply they should produce."""

    id: str
    prompt: Messages
    answer: str
    label: str | None


def to_examples(ids: Sequence[str], conversations: Sequence[Sequence[dict]], labels: Sequence[str | None], what: str) -> list[Example]:
    out = []
    for row, (rid, messages, label) in enumerate(zip(ids, conversations, labels), start=1):
        turns = [{"role": m["role"], "content": m["content"]} for m in messages or []]
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            raise TrainError(f"{what}, row {row}: no assistant turn, so no reference answer to score against")
        if not any(m["role"] == "user" for m in turns[:last]):
            raise TrainError(f"{what}, row {row}: no user turn before the reply")
        out.append(Example(rid, turns[:last], turns[last]["content"], label))
    return out


def detect_task(examples: Sequence[Example]) -> str:
    """Classification when every reply is the row's label; exact answers when replies are a few words; else free text."""
    if examples and all(e.label is not None and e.answer.strip() == e.label.strip() for e in examples):
        return CLASSIFICATION
    words = sorted(len(e.answer.split()) for e in examples)
    return EXACT if words and words[len(words) // 2] <= 5 else FREE


def gold(example: Example, task: str) -> str:
    return example.label if task == CLASSIFICATION and example.label is not None else example.answer


def shared_system(examples: Sequence[Example]) -> str | None:
    """The system message every training row opens with, if they all share one."""
    systems = {e.prompt[0]["content"] if e.prompt and e.prompt[0]["role"] == "system" else None for e in examples}
    return systems.pop() if len(systems) == 1 else None


def with_system(prompt: Messages, system: str | None, override: bool = False) -> Messages:
    """`prompt` opening with `system`: added where it has none (replaced as well when `override`)."""
    has = bool(prompt) and prompt[0]["role"] == "system"
    if system is None or (has and not override):
        return list(prompt)
    return [{"role": "system", "content": system}, *(prompt[1:] if has else prompt)]


def default_k(task: str, labels: Sequence[str]) -> int:
    """One shot per label (at most 8) for classification; 3 otherwise."""
    return min(MAX_DEFAULT_SHOTS, len(labels)) if task == CLASSIFICATION else 3


def pick_shots(pool: Sequence[Example], k: int, task: str, seed: int) -> list[Example]:
    """k training rows, the same for every test row; stratified by label for classification."""
    if k > len(pool):
        raise TrainError(f"{k} shots asked for but only {len(pool)} training rows to draw them from")
    rng = np.random.default_rng(seed)
    if task == CLASSIFICATION:
        by_label: dict[str, list[Example]] = {}
        for e in pool:
            by_label.setdefault(e.label or "", []).append(e)
        queues = {label: [rows[i] for i in rng.permutation(len(rows))] for label, rows in sorted(by_label.items())}
        chosen: list[Example] = []
        while len(chosen) < k:
            for label in queues:
                if queues[label] and len(chosen) < k:
                    chosen.append(queues[label].pop(0))
    else:
        chosen = [pool[i] for i in rng.permutation(len(pool))[:k]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def kshot_prompt(prompt: Messages, shots: Sequence[Example], system: str | None) -> Messages:
    """The test prompt after the shots, as earlier turns of one conversation."""
    head = [{"role": "system", "content": system}] if system is not None else []
    if prompt and prompt[0]["role"] == "system":
        head, prompt = [prompt[0]], prompt[1:]
    turns: Messages = []
    for shot in shots:
        turns += [m for m in shot.prompt if m["role"] != "system"]
        turns.append({"role": "assistant", "content": shot.answer})
    return [*head, *turns, *prompt]


def overlap(test: Sequence[Example], train: Sequence[Example]) -> int:
    """Test rows whose id or prompt (user turns, whitespace and case folded) also occur in the training rows."""
    def key(e: Example) -> str:
        return "\n".join(" ".join(m["content"].lower().split()) for m in e.prompt if m["role"] == "user")

    ids = {e.id for e in train}
    keys = {key(e) for e in train}
    return sum(e.id in ids or key(e) in keys for e in test)


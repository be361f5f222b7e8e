"""Task specs: what one synthetic sample is, how it maps onto a record, and what it must cover.

A task is a YAML file:

.. code-block:: yaml

    name: support-tickets
    instructions: Write one realistic customer-support ticket for a SaaS product.
    sensitive: false            # true turns the privacy guard on
    n: 200                      # samples to generate
    strategy: taxonomy          # taxonomy | self_instruct | evolve | a plugin's (synth.strategies)
    seeds:                      # a few examples (may be private: never copied, see privacy)
      - {text: "I was charged twice this month.", label: billing}
    output:
      fields:                   # one sample, as a JSON object (structured output)
        text: {type: string, description: the ticket, as the customer wrote it}
        label: {type: string, enum: [billing, technical, account, shipping]}
      user: "{text}"            # the record's user turn, from the fields
      assistant: "{label}"      # the record's assistant turn
      label: "{label}"          # optional: the record's label
      system: null              # optional: a system turn
    axes:                       # coverage: every sample gets one value per axis
      persona: [new user, admin, developer]
      difficulty: [easy, hard]
    sampling: {temperature: 0.8, max_tokens: 256, seed: 0}

Specs are validated before anything runs; each error names the key.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from curate.errors import InputError
from curate.yaml_files import read_yaml
from synth.strategies import get_strategy, strategy_names

FIELD_TYPES = {"string", "integer", "number", "boolean"}


@dataclass
class OutputSpec:
    fields: dict[str, dict[str, Any]]
    user: str
    assistant: str
    label: str | None = None
    system: str | None = None

    def json_schema(self, fixed: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON schema every generated sample must match (used for structured output).

        `fixed` pins fields to values: an axis named like a field (say `label`) decides
        that field, so the planned coverage is the coverage you get.
        """
        props = {}
        for name, spec in self.fields.items():
            prop = {"type": spec.get("type", "string")}
            for key in ("enum", "description", "minLength", "maxLength", "minimum", "maximum"):
                if key in spec:
                    prop[key] = spec[key]
            if fixed and name in fixed:
                prop["enum"] = [fixed[name]]
            props[name] = prop
        return {"type": "object", "properties": props, "required": list(self.fields), "additionalProperties": False}

    def unbounded_strings(self) -> list[str]:
        """Free-text fields without a maxLength: no budget of tokens is sure to hold a reply."""
        return [name for name, spec in self.fields.items()
                if spec.get("type", "string") == "string" and "enum" not in spec and "maxLength" not in spec]

    def max_reply_tokens(self) -> int | None:
        """Tokens that any reply matching `json_schema()` fits in, or None when a string is unbounded.

        The longest matching object, written compactly, counted one token per character: a
        byte-level BPE tokenizer never spends more on ASCII text (digits can take one each),
        and structured output can always close the object within this budget. Whitespace the
        grammar allows between tokens is bounded by the backend, not here; a small margin covers it.
        """
        if self.unbounded_strings():
            return None
        longest: dict[str, Any] = {}
        for name, spec in self.fields.items():
            kind = spec.get("type", "string")
            if "enum" in spec:
                longest[name] = max((str(v) for v in spec["enum"]), key=len)
            elif kind == "string":
                longest[name] = "x" * int(spec["maxLength"])
            elif kind == "boolean":
                longest[name] = False
            else:
                longest[name] = -1.0e300  # integers and numbers: at most about 24 characters
        return len(json.dumps(longest)) + 8 * len(self.fields) + 16

    def render(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Map a generated sample onto the record model's messages and label."""
        values = {k: "" if v is None else str(v) for k, v in sample.items()}
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format(**values)})
        messages.append({"role": "user", "content": self.user.format(**values)})
        messages.append({"role": "assistant", "content": self.assistant.format(**values)})
        return {"messages": messages, "label": self.label.format(**values) if self.label else None}


@dataclass
class TaskSpec:
    name: str
    instructions: str
    output: OutputSpec
    n: int
    seeds: list[dict[str, Any]] = field(default_factory=list)
    axes: dict[str, list[str]] = field(default_factory=dict)
    strategy: str = "taxonomy"
    sensitive: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate a task YAML file."""
    return parse_task(read_yaml(path, "task"), Path(path))


def parse_task(data: Any, path: str | Path | None = None) -> TaskSpec:
    def fail(key: str, reason: str) -> InputError:
        return InputError(path, reason, field=key)

    if not isinstance(data, dict):
        raise fail("<top>", "a task spec is a mapping of keys (name, instructions, output, n, ...)")
    for key in ("name", "instructions", "output", "n"):
        if key not in data:
            raise fail(key, f"missing key '{key}'")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise fail("name", "must be a non-empty string")
    if not isinstance(data["instructions"], str) or not data["instructions"].strip():
        raise fail("instructions", "must be a non-empty string")
    n = data["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise fail("n", f"must be a positive integer, got {n!r}")
    output = _parse_output(data["output"], fail)
    strategy = data.get("strategy", "taxonomy")
    if strategy not in strategy_names():
        raise fail("strategy", f"unknown strategy {strategy!r}; choose from {', '.join(strategy_names())}")
    seeds = data.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, dict) for s in seeds):
        raise fail("seeds", "must be a list of mappings, each shaped like one output sample")
    for i, seed in enumerate(seeds):
        missing = [f for f in output.fields if f not in seed]
        if missing:
            raise fail(f"seeds[{i}]", f"missing field(s) {missing} of output.fields")
    if get_strategy(strategy).needs_seeds and not seeds:
        raise fail("seeds", f"strategy {strategy} needs at least one seed")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise fail("axes", "must be a mapping of axis name to a list of values")
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise fail(f"axes.{name}", "must be a non-empty list of values")
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise fail("sampling", "must be a mapping (temperature, top_p, max_tokens, seed)")
    unknown = set(data) - {"name", "instructions", "output", "n", "strategy", "seeds", "axes", "sensitive", "sampling"}
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key(s) {sorted(unknown)}")
    return TaskSpec(
        name=data["name"].strip(), instructions=data["instructions"].strip(), output=output, n=n, seeds=seeds,
        axes={k: [str(v) for v in vs] for k, vs in axes.items()}, strategy=strategy,
        sensitive=bool(data.get("sensitive", False)), sampling=sampling, path=Path(path) if path else None,
    )


def _parse_output(value: Any, fail) -> OutputSpec:
    if not isinstance(value, dict):
        raise fail("output", "must be a mapping with fields, user and assistant")
    fields = value.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise fail("output.fields", "missing or empty: name each field of one sample")
    for name, spec in fields.items():
        if not isinstance(spec, dict):
            raise fail(f"output.fields.{name}", "must be a mapping with at least a type")
        if spec.get("type", "string") not in FIELD_TYPES:
            raise fail(f"output.fields.{name}.type", f"must be one of {sorted(FIELD_TYPES)}")
        if "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
            raise fail(f"output.fields.{name}.enum", "must be a non-empty list")
    for key in ("user", "assistant"):
        if not isinstance(value.get(key), str):
            raise fail(f"output.{key}", f"missing: a template such as '{{{next(iter(fields))}}}'")
    for key in ("user", "assistant", "label", "system"):
        template = value.get(key)
        if template is None:
            continue
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        unknown = used - set(fields)
        if unknown:
            raise fail(f"output.{key}", f"uses {sorted(unknown)}, which are not in output.fields")
    return OutputSpec(fields=fields, user=value["user"], assistant=value["assistant"],
                      label=value.get("label"), system=value.get("system"))

"""`synth generate`: plan samples over the task's axes, ask the teacher, keep what parses.

Every planned sample has a deterministic key (task, strategy, index, axis values),
so a run killed at any point and started again generates exactly the missing
samples: none twice, none lost (see `journal`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from curate.atomic import sidecar
from curate.drops import empty_drops, make_drops
from curate.records import CORE_SCHEMA, order_columns, with_ids
from synth.coverage import plan
from synth.journal import Journal
from synth.prompts import build_chat
from synth.task import TaskSpec
from curate.engines import Engine
from curate.llm import Generation, SamplingConfig


@dataclass
class Planned:
    key: str
    index: int
    axes: dict[str, str]
    chat: list[dict[str, str]]
    prompt_hash: str


@dataclass
class GenerateResult:
    records: pl.DataFrame
    drops: pl.DataFrame
    usage: dict[str, Any] = field(default_factory=dict)


def plan_samples(task: TaskSpec, seed: int) -> list[Planned]:
    samples = []
    for index, axes in enumerate(plan(task.axes, task.n, seed)):
        chat = build_chat(task, index, axes)
        prompt_hash = hashlib.blake2b(json.dumps(chat, sort_keys=True).encode(), digest_size=8).hexdigest()
        ident = json.dumps([task.name, task.strategy, index, axes, seed], sort_keys=True)
        key = hashlib.blake2b(ident.encode(), digest_size=12).hexdigest()
        samples.append(Planned(key, index, axes, chat, prompt_hash))
    return samples


def journal_path(output: str | Path) -> Path:
    return sidecar(output, "partial.jsonl")


def generate(task: TaskSpec, teacher: Engine, output: str | Path, *, model_name: str, structured: bool = True,
             batch_size: int = 16, progress: bool = True) -> GenerateResult:
    """Generate `task.n` samples, resuming from the journal beside `output` if there is one."""
    base = SamplingConfig(**task.sampling)
    planned = plan_samples(task, base.seed)
    journal = Journal(journal_path(output))
    todo = [p for p in planned if p.key not in journal]
    started, new_tokens = time.perf_counter(), 0
    with tqdm(total=len(planned), initial=len(planned) - len(todo), desc=f"synth {task.name}",
              unit="sample", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            sampling = [dataclasses.replace(base, seed=base.seed + p.index) for p in batch]
            schemas = [task.output.json_schema(fixed=p.axes) for p in batch] if structured else None
            generations = teacher.chat([p.chat for p in batch], sampling, json_schema=schemas)
            if structured:
                generations = _finish_cut_off(task, teacher, batch, sampling, schemas, generations)
            entries = []
            for p, g in zip(batch, generations):
                sample, error = parse_sample(g.text, task)
                new_tokens += g.completion_tokens
                entries.append({"key": p.key, "index": p.index, "axes": p.axes, "prompt_hash": p.prompt_hash,
                                "seed": base.seed + p.index, "text": g.text, "sample": sample, "error": error,
                                "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                                "finish_reason": g.finish_reason})
            journal.append(entries)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    entries = [journal.entries[p.key] for p in planned]
    records, drops = _to_records(task, entries, model_name)
    usage = {
        "prompt_tokens": sum(e["prompt_tokens"] for e in entries),
        "completion_tokens": sum(e["completion_tokens"] for e in entries),
        "generated_this_run": len(todo),
        "resumed": len(planned) - len(todo),
        "output_tokens_per_s": round(new_tokens / elapsed, 2) if todo and elapsed > 0 else None,
        "parsed": sum(e["sample"] is not None for e in entries),
    }
    return GenerateResult(records, drops, usage)


def _finish_cut_off(task: TaskSpec, teacher: Engine, batch: list[Planned], sampling: list[SamplingConfig],
                    schemas: list[dict], generations: list[Generation]) -> list[Generation]:
    """Ask again, with room for the longest reply the schema allows, for replies cut off at max_tokens.

    A small model can loop inside a string (digits, one token each) until the schema's
    maxLength; the cut-off JSON would not parse. Same prompt and seed, so the retry is
    what an uncut run would have written. Without a bound on every string there is no
    such room to give, and the cut-off replies stay unparsable (the task check warns).
    """
    budget = task.output.max_reply_tokens()
    cut = [i for i, g in enumerate(generations) if g.finish_reason == "length"]
    if not cut or budget is None or budget <= min(sampling[i].max_tokens for i in cut):
        return generations
    again = teacher.chat([batch[i].chat for i in cut],
                         [dataclasses.replace(sampling[i], max_tokens=budget) for i in cut],
                         json_schema=[schemas[i] for i in cut])
    out = list(generations)
    for i, g in zip(cut, again):
        out[i] = dataclasses.replace(g, completion_tokens=g.completion_tokens + generations[i].completion_tokens)
    return out


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_sample(text: str, task: TaskSpec) -> tuple[dict[str, Any] | None, str | None]:
    """The sample as a dict, or why it is unusable."""
    match = _JSON_OBJECT.search(text)
    if not match:
        return None, "no JSON object in the reply"
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    if not isinstance(value, dict):
        return None, "the reply is not a JSON object"
    missing = [f for f in task.output.fields if f not in value]
    if missing:
        return None, f"missing field(s) {missing}"
    for name, spec in task.output.fields.items():
        if "enum" in spec and value[name] not in spec["enum"]:
            return None, f"field '{name}' = {value[name]!r} is not one of {spec['enum']}"
    if any(isinstance(value[f], str) and not value[f].strip() for f in task.output.fields):
        return None, "an empty field"
    return value, None


def _to_records(task: TaskSpec, entries: list[dict[str, Any]], model_name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows, failed = [], []
    for e in entries:
        if e["sample"] is None:
            failed.append(e)
            continue
        rendered = task.output.render(e["sample"])
        meta = {"synth": {"task": task.name, "strategy": task.strategy, "axes": e["axes"], "key": e["key"],
                          "prompt_hash": e["prompt_hash"], "model": model_name, "seed": e["seed"]},
                "sample": e["sample"]}
        rows.append({"id": "", "messages": rendered["messages"], "label": rendered["label"],
                     "source": f"synth:{task.name}", "meta": json.dumps(meta, ensure_ascii=False)})
    records = order_columns(with_ids(pl.DataFrame(rows, schema=CORE_SCHEMA))) if rows else pl.DataFrame(schema=CORE_SCHEMA)
    if not failed:
        return records, empty_drops()
    drops = make_drops(
        id=[f"synth:{e['key']}" for e in failed], step="synth", reason="unparsable",
        detail=[f"{e['error']}; reply: {e['text'][:120]!r}" for e in failed],
    )
    return records, drops


def seed_audit(records: pl.DataFrame, task: TaskSpec) -> dict[str, Any] | None:
    """Fidelity and privacy of the generated records against the task's seeds, as `curate audit --against`
    measures them (`curate.audit`): the verdicts and their figures, for the manifest. None without seeds."""
    if not task.seeds or records.height == 0:
        return None
    from curate.audit import fidelity_privacy

    seeds = pl.DataFrame([{"id": "", **task.output.render(seed), "source": f"seeds:{task.name}", "meta": "{}"}
                          for seed in task.seeds], schema=CORE_SCHEMA)
    fidelity, privacy, _ = fidelity_privacy(records, with_ids(seeds), names=(f"synth:{task.name}", "seeds"))
    checks = {name: {k: c.get(k) for k in ("value", "p_value", "drift", "skipped") if k in c}
              for name, c in fidelity.get("checks", {}).items()}
    return {"fidelity": {"verdict": fidelity["verdict"], "reasons": fidelity["reasons"], "checks": checks},
            "privacy": {k: privacy[k] for k in ("verdict", "reasons", "notes", "synthetic_rows", "real_rows", "baseline",
                                                 "dcr", "pii")}
                       | {"copies": {k: v for k, v in privacy["copies"].items() if k != "examples"}}}

"""Explain: the whole story of one row, from the raw file to the final dataset.

For each step in the lineage: was the row there, did it survive, and if not, the
reason, the row it duplicates and the similarity. Scores and flags come from the
last dataset that still holds the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import InputError
from curate.lineage import Step, steps
from curate.readers import read_records
from curate.records import CORE_COLUMNS


@dataclass
class StepOutcome:
    command: str
    output: str
    outcome: str  # "kept", "dropped", "absent"
    drop: dict[str, Any] | None = None


@dataclass
class Story:
    id: str
    record: dict[str, Any]
    outcomes: list[StepOutcome] = field(default_factory=list)
    duplicate_of: dict[str, Any] | None = None

    @property
    def final(self) -> str:
        dropped = [o for o in self.outcomes if o.outcome == "dropped"]
        return f"dropped by {dropped[0].command} ({dropped[0].drop['reason']})" if dropped else "kept"

    @property
    def stage_values(self) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k not in CORE_COLUMNS}


def explain(row_id: str, dataset: str | Path) -> Story:
    """Follow `row_id` (or an unambiguous prefix of it) through the lineage of `dataset`."""
    chain = steps(dataset)
    if not chain:
        raise InputError(dataset, "no manifest beside this dataset: it was not written by a curate command")
    tables = {step.output: _load(step.output) for step in chain}
    for step in chain:
        for path in step.inputs:
            if path not in tables and path.exists():
                tables[path] = _load(path)
    full_id = _full_id(row_id, tables, dataset)
    story = Story(full_id, _last_record(full_id, tables, chain))
    for step in chain:
        story.outcomes.append(_outcome(step, full_id, tables))
    drop = next((o.drop for o in story.outcomes if o.outcome == "dropped" and o.drop and o.drop.get("duplicate_of")), None)
    if drop:
        story.duplicate_of = _find(drop["duplicate_of"], tables)
    return story


def _load(path: Path) -> pl.DataFrame:
    return read_records(path).records if path.exists() else pl.DataFrame()


def _full_id(row_id: str, tables: dict[Path, pl.DataFrame], dataset) -> str:
    matches = set()
    for table in tables.values():
        if "id" in table.columns:
            matches.update(table.filter(pl.col("id").str.starts_with(row_id))["id"].to_list())
    if not matches:
        raise InputError(dataset, f"no row with id '{row_id}' in this dataset or any of its inputs", field="id")
    if len(matches) > 1:
        raise InputError(dataset, f"id prefix '{row_id}' matches {len(matches)} rows; give more characters", field="id")
    return matches.pop()


def _find(row_id: str, tables: dict[Path, pl.DataFrame]) -> dict[str, Any] | None:
    for table in reversed(list(tables.values())):
        if "id" in table.columns:
            hit = table.filter(pl.col("id") == row_id)
            if hit.height:
                return hit.row(0, named=True)
    return None


def _last_record(row_id: str, tables: dict[Path, pl.DataFrame], chain: list[Step]) -> dict[str, Any]:
    ordered = [tables[s.output] for s in reversed(chain)] + list(tables.values())
    for table in ordered:
        if "id" in table.columns:
            hit = table.filter(pl.col("id") == row_id)
            if hit.height:
                return hit.row(0, named=True)
    return {"id": row_id}


def _outcome(step: Step, row_id: str, tables: dict[Path, pl.DataFrame]) -> StepOutcome:
    in_input = any(
        "id" in tables.get(p, pl.DataFrame()).columns and (tables[p]["id"] == row_id).any() for p in step.inputs
    )
    out = tables[step.output]
    in_output = "id" in out.columns and bool((out["id"] == row_id).any())
    drops = step.drops.filter(pl.col("id") == row_id)
    if drops.height and not in_output:
        return StepOutcome(step.command, str(step.output), "dropped", drops.row(0, named=True))
    if in_output:  # an identical copy (same id) may have been dropped beside it
        return StepOutcome(step.command, str(step.output), "kept", drops.row(0, named=True) if drops.height else None)
    return StepOutcome(step.command, str(step.output), "absent" if not in_input else "dropped", None)

"""Lineage: walk back from a dataset through the manifests that made it.

Every command writes a manifest naming its inputs; following those links from the
last output back to the raw files gives the steps a row went through, in order.
`curate explain` and `curate report` are built on this walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.drops import drops_path, read_drops
from curate.errors import InputError
from curate.manifest import content_hash, manifest_path, read_manifest


@dataclass
class Step:
    """One command run: what it read, what it wrote, and what it dropped."""

    command: str
    output: Path
    inputs: list[Path]
    manifest: dict[str, Any]

    @property
    def drops(self) -> pl.DataFrame:
        return read_drops(self.output)

    @property
    def has_drops(self) -> bool:
        return drops_path(self.output).exists()


def steps(output: str | Path) -> list[Step]:
    """The steps that led to `output`, oldest first (depth-first along the first input)."""
    chain: list[Step] = []
    seen: set[Path] = set()
    todo = [Path(output)]
    while todo:
        current = todo.pop()
        if current.resolve() in seen or not manifest_path(current).exists():
            continue
        seen.add(current.resolve())
        manifest = read_manifest(current)
        if not any(Path(o["path"]).name == current.name for o in manifest.get("outputs", [])):
            continue  # a sibling's manifest (raw.jsonl beside raw.parquet), not this file's
        _check_unit(current, manifest)
        inputs = [_resolve(current, i["path"]) for i in manifest.get("inputs", [])]
        chain.append(Step(manifest["command"], current, inputs, manifest))
        todo.extend(reversed(inputs))
    return list(reversed(chain))


def _check_unit(output: Path, manifest: dict[str, Any]) -> None:
    """An output, its drops and its manifest are one unit: refuse a mix of two runs (a run killed between
    writing its files, or a file replaced by hand), since the story it tells would be wrong."""
    for entry in manifest.get("outputs", []):
        path = output.parent / Path(entry["path"]).name
        if entry.get("hash") and path.exists() and content_hash(path) != entry["hash"]:
            raise InputError(path, f"does not match its manifest {manifest_path(output).name} (a run was interrupted "
                                   "between writing them, or the file was replaced): run the command again")


def _resolve(output: Path, recorded: str) -> Path:
    """A recorded input path, tried as written, then relative to the output's folder."""
    path = Path(recorded)
    if path.exists() or path.is_absolute():
        return path
    beside = output.parent / path.name
    return beside if beside.exists() else path

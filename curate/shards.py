"""Datasets as folders of Parquet shards: how Ray, Spark, datatrove and NeMo Curator hand data over.

A folder that holds `*.parquet` files (at any depth) is one dataset: its shards in sorted path
order, each shard's rows in file order. What is not Parquet, and every file or folder whose name
starts with `_` or `.` (`_SUCCESS`, `.part-0.crc`, a killed writer's temporary) is bookkeeping,
not data; so are drops tables written into the folder (`x.parquet.drops.parquet`).

smallset writes its own shards as `part-00000.parquet`, `part-00001.parquet`, ... with a mark in
each file's footer (`MARK`): a folder it may replace is told apart from a user's by its content,
with no extra file in it that another reader (`pl.scan_parquet("out/")`) would stumble over.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl

SUFFIXES = (".parquet", ".pq")
SHARD_NAME = "part-{:05d}.parquet"
MARK = {"smallset": "shard"}
"""Key-value metadata in the footer of every shard smallset writes."""

_OWN_NAME = re.compile(r"part-\d{5,}\.parquet")
_SIDECARS = (".drops.parquet",)


def is_bookkeeping(relative: Path) -> bool:
    """A file that a folder of shards may hold beside its data: hidden, `_`-named, or in such a folder."""
    return any(part.startswith(("_", ".")) for part in relative.parts)


def is_shard(relative: Path) -> bool:
    """A data file of a folder of shards (`relative`: its path inside the folder)."""
    name = relative.name.lower()
    return name.endswith(SUFFIXES) and not name.endswith(_SIDECARS) and not is_bookkeeping(relative)


def files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The shards of a folder, in the order their rows are read: sorted by path."""
    folder = Path(folder)
    return [p for p in files(folder) if is_shard(p.relative_to(folder))]


def only_shards(folder: Path, found: list[Path]) -> list[Path] | None:
    """`found` (files under `folder`) cut to its shards, where everything else is bookkeeping;
    None where the folder holds other files too (then it is not just a dataset)."""
    relative = [p.relative_to(folder) for p in found]
    shards = [p for p, rel in zip(found, relative) if is_shard(rel)]
    if shards and all(is_shard(rel) or is_bookkeeping(rel) for rel in relative):
        return shards
    return None


def foreign_file(folder: Path) -> Path | None:
    """The first thing in `folder` that smallset's shard writer did not put there, or None.

    Ours are `part-NNNNN.parquet` files directly in the folder whose footer carries `MARK`;
    anything else (another name, a subfolder, an unmarked or unreadable file) is a user's.
    """
    import pyarrow.parquet as pq

    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file() or not _OWN_NAME.fullmatch(entry.name):
            return entry
        try:
            meta = pq.read_metadata(entry).metadata or {}
        except Exception:
            return entry
        if any(meta.get(k.encode()) != v.encode() for k, v in MARK.items()):
            return entry
    return None


class SchemaMismatch(ValueError):
    """Shard `index` has columns that differ from the first shard's: `column`, and why in `reason`."""

    def __init__(self, index: int, column: str, reason: str) -> None:
        super().__init__(f"shard {index}: {reason}")
        self.index, self.column, self.reason = index, column, reason


def common_schema(schemas: list[pl.Schema], first: str = "the first shard") -> pl.Schema:
    """The one schema of all shards, in the first shard's column order; `SchemaMismatch` for the
    first shard whose columns differ. A column all null in some shards (type Null) takes the
    type the others give it, as an executor's batch of nulls would have it."""
    base = schemas[0]
    merged = dict(base)
    for index, schema in enumerate(schemas[1:], 1):
        missing = next((name for name in base if name not in schema), None)
        if missing is not None:
            raise SchemaMismatch(index, missing, f"has no column '{missing}', which {first} has; "
                                                 "every shard needs the same columns")
        for name, dtype in schema.items():
            if name not in base:
                raise SchemaMismatch(index, name, f"has a column '{name}' that {first} has not; "
                                                  "every shard needs the same columns")
            if merged[name] == pl.Null:
                merged[name] = dtype
            elif dtype != merged[name] and dtype != pl.Null:
                raise SchemaMismatch(index, name, f"column '{name}' is {dtype}, where the shards before it "
                                                  f"(from {first} on) have {merged[name]}")
    return pl.Schema(merged)

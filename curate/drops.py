"""Drops: every row a step removes keeps its reason.

Each step that removes rows writes `<output>.drops.parquet` beside its output
(one table beside a folder of shards too: `out` has `out.drops.parquet`),
one row per dropped record, in this schema. `curate explain` and the report read
these tables back; nothing disappears without a line here.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.atomic import atomic_path, sidecar

DROPS_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),  # the dropped record
    "step": pl.String(),  # "dedup", "filter", "decontaminate", "select"...
    "reason": pl.String(),  # a reason code: "exact_duplicate", "too_long", ...
    "duplicate_of": pl.String(),  # for duplicates and overlaps: the record it matches
    "similarity": pl.Float64(),  # Jaccard, cosine or overlap, where there is one
    "detail": pl.String(),  # a short human-readable explanation
}


def make_drops(**columns) -> pl.DataFrame:
    """Build a drops table from columns (scalars broadcast); missing columns are null."""
    height = max((len(v) for v in columns.values() if isinstance(v, (list, pl.Series))), default=0)
    data = {}
    for name, dtype in DROPS_SCHEMA.items():
        value = columns.get(name)
        if isinstance(value, (list, pl.Series)):
            data[name] = pl.Series(name, value, dtype=dtype)
        else:
            data[name] = pl.Series(name, [value] * height, dtype=dtype)
    return pl.DataFrame(data)


def empty_drops() -> pl.DataFrame:
    return pl.DataFrame(schema=DROPS_SCHEMA)


def drops_path(output: str | Path) -> Path:
    return sidecar(output, "drops.parquet")


def write_drops(drops: pl.DataFrame, output: str | Path) -> Path:
    dest = drops_path(output)
    with atomic_path(dest) as tmp:
        drops.select(list(DROPS_SCHEMA)).write_parquet(tmp)
    return dest


def read_drops(output: str | Path) -> pl.DataFrame:
    path = drops_path(output)
    return pl.read_parquet(path) if path.exists() else empty_drops()

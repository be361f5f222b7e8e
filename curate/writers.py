"""Writers: Parquet (the working format) and JSONL (for people and other tools). Atomic."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from curate.atomic import atomic_path, check_parents
from curate.errors import InputError
from curate.readers import Reject

WRITE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format(path: Path) -> str:
    """The format an output's suffix asks for; an error naming the ones there are."""
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(path, f"cannot write '{path.suffix}' files; use one of {', '.join(WRITE_FORMATS)}")
    return fmt


def check_output(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output before any work: an unknown suffix, a folder, a parent that is a file, or one of the
    command's own inputs (writing it would destroy the data being read)."""
    path = Path(path)
    _format(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name ending in .parquet or .jsonl")
    check_parents(path)
    target = path.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise InputError(path, "is also an input of this command; writing it would destroy the input. "
                                   "Choose another output file")


def write_records(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a record set; the format follows the suffix. Nothing appears until it is complete."""
    path = Path(path)
    fmt = _format(path)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.write_parquet(tmp, compression="zstd", statistics=True)
        else:
            _write_jsonl(df, tmp)
    return path


# Rows per slice when writing JSONL: the lines of one slice are built in memory, not the whole file's.
_JSONL_SLICE = 65_536


def _write_jsonl(df: pl.DataFrame, tmp: Path) -> None:
    """JSONL with `meta` written as a nested object rather than as JSON-in-a-string.

    Written in slices, so that only one slice's lines are in memory at a time
    (the whole file's would be as large as the file).
    """
    nested_meta = "meta" in df.columns and df.schema["meta"] == pl.String
    if nested_meta:
        others = [c for c in df.columns if c != "meta"]
        line = pl.concat_str(
            pl.struct(others).struct.json_encode().str.strip_suffix("}"),
            pl.lit(',"meta":'),
            pl.col("meta").fill_null("{}"),
            pl.lit("}"),
        )
    with open(tmp, "wb") as fh:
        for part in df.iter_slices(_JSONL_SLICE):
            if nested_meta:
                part.select(line.alias("line")).write_csv(fh, include_header=False, quote_style="never")
            else:
                part.write_ndjson(fh)


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> Path:
    """One JSON object per rejected input row: file, line, field, reason."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for reject in rejects:
                fh.write(json.dumps(reject.to_dict(), ensure_ascii=False) + "\n")
    return path

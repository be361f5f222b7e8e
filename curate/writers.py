"""Writers: Parquet (the working format), JSONL (for people and other tools) and folders of Parquet
shards (for Ray, Spark and the like: see `curate.shards`). Atomic, a folder as a whole."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from curate.atomic import atomic_path, check_parents
from curate.errors import InputError
from curate.readers import Reject
from curate.shards import MARK, SHARD_NAME, SchemaMismatch, common_schema, foreign_file

if TYPE_CHECKING:
    import pyarrow as pa

WRITE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ROWS_PER_SHARD = 250_000
"""Rows per shard of a folder output; `SMALLSET_ROWS_PER_SHARD` overrides it."""


def _format(path: Path) -> str:
    """The format an output's suffix asks for; an error naming the ones there are."""
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(path, f"cannot write '{path.suffix}' files; use one of {', '.join(WRITE_FORMATS)}")
    return fmt


def is_folder_output(path: str | os.PathLike[str]) -> bool:
    """An output that is a folder of shards: an existing folder, a path ending in `/`, or a name with no suffix."""
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir() or not Path(text).suffix


def check_output(path: str | Path, *, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output before any work: an unknown suffix, a folder that holds a user's files, a parent
    that is a file, or one of the command's own inputs, a folder that holds one or one inside an input
    folder (writing it would destroy or change the data being read)."""
    if is_folder_output(path):
        _check_folder(Path(path))
        _rows_per_shard(None)
    else:
        _format(Path(path))
    path = Path(path)
    check_parents(path)
    target = path.resolve()
    for source in inputs:
        read = Path(source).resolve()
        if read == target:
            raise InputError(path, "is also an input of this command; writing it would destroy the input. "
                                   "Choose another output file")
        if target in read.parents:
            raise InputError(path, f"holds the input {source}; writing it would destroy that input. "
                                   "Choose another output")
        if read in target.parents:
            raise InputError(path, f"lies inside the input folder {source}; writing it would change that input. "
                                   "Choose another output")


def _check_folder(path: Path) -> None:
    """A folder output replaces the whole folder: only a new one, an empty one or an earlier smallset output,
    never one with a user's files in it."""
    if path.is_symlink():
        raise InputError(path, "is a symbolic link; give the folder it points to, or a new name")
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a folder of shards; for a file output give a name ending in "
                               f"{' or '.join(WRITE_FORMATS)}, for a folder a new name")
    foreign = foreign_file(path) if path.is_dir() else None
    if foreign is not None:
        raise InputError(path, f"holds files smallset did not write ({foreign.name}); an output folder is replaced "
                               "whole, so it must be new, empty or an earlier smallset output. Choose another output")


def _rows_per_shard(value: int | None) -> int:
    """`value`, else `SMALLSET_ROWS_PER_SHARD`, else `ROWS_PER_SHARD`: a positive whole number."""
    name = "rows_per_shard"
    if value is None:
        text = os.environ.get("SMALLSET_ROWS_PER_SHARD")
        if text is None:
            return ROWS_PER_SHARD
        name = "SMALLSET_ROWS_PER_SHARD"
        try:
            value = int(text)
        except ValueError:
            raise InputError(name, f"must be a whole number of rows, not {text!r}") from None
    if value < 1:
        raise InputError(name, f"must be at least 1, not {value}")
    return value


def write_records(df: pl.DataFrame, path: str | Path, *, rows_per_shard: int | None = None) -> Path:
    """Write a record set; the format follows the suffix, and a folder output (`is_folder_output`) gets
    shards of at most `rows_per_shard` rows. Nothing appears until it is complete."""
    if is_folder_output(path):
        size = _rows_per_shard(rows_per_shard)
        return write_shards(df.iter_slices(size) if df.height else [df], path)
    path = Path(path)
    fmt = _format(path)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.write_parquet(tmp, compression="zstd", statistics=True)
        else:
            _write_jsonl(df, tmp)
    return path


def write_shards(tables: Iterable[pl.DataFrame | pa.Table], folder: str | Path) -> Path:
    """Write one shard per table, `part-00000.parquet`, `part-00001.parquet`, ..., into `folder`, which
    appears whole or not at all (an earlier smallset output there is replaced): for an executor that
    produces its results batch by batch. The tables must share their columns; at least one (an empty
    table keeps the columns)."""
    folder = Path(folder)
    _check_folder(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        schema = None
        for index, table in enumerate(tables):
            frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
            try:  # as the reader will check them, and before more is written
                schema = common_schema([schema, frame.schema] if schema is not None else [frame.schema], "shard 0")
            except SchemaMismatch as exc:
                raise SchemaMismatch(index, exc.column, exc.reason) from None
            frame.write_parquet(tmp / SHARD_NAME.format(index), compression="zstd", statistics=True, metadata=MARK)
        if schema is None:
            raise ValueError("write_shards needs at least one table (an empty one keeps the columns)")
    return folder


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

"""Readers: JSONL, JSON, CSV/TSV, Parquet and saved Hugging Face `datasets` folders.

Every reader produces a raw polars table, which `layouts.to_records` maps onto the
record model. Well-formed files take a fast columnar path; only when that fails is
a file scanned line by line, to name the exact line and field that are wrong.

JSON Lines larger than one block go in blocks of whole lines (see `_read_jsonl_blocks`):
worker threads parse blocks (pyarrow under the first block's schema, polars wherever
that would read differently), map them and hash their ids, so that a large file is
read on every core and only a few blocks of raw data are alive at a time. The
records, rejects and errors are those of the whole-file reader, line numbers included.

With `on_error="fail"` (the default) the first bad row raises `InputError`. With
`on_error="skip"` bad rows are left out and returned as `Reject`s, one reason each.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import accumulate, islice
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate import records as _records
from curate.errors import InputError
from curate.layouts import Mapping, map_rows, to_records

OnError = Literal["fail", "skip"]

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class Reject:
    """An input row that was left out, and why."""

    file: str
    line: int | None
    field: str | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReadResult:
    records: pl.DataFrame
    rejects: list[Reject]
    rows_in: int


@dataclass
class _Raw:
    """A raw table and a way to turn a row index into the line (or row) a person can find."""

    table: pl.DataFrame
    locate: Callable[[int], int]
    unit: str  # "line" or "row"
    rejects: list[Reject]


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf"
        raise InputError(path, "a folder that is not a saved Hugging Face dataset (no dataset_info.json or dataset_dict.json)")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(path, f"unknown file type '{path.suffix}'; expected one of {', '.join(sorted(FORMATS))} or a saved datasets folder")
    return fmt


def read_records(
    path: str | Path,
    mapping: Mapping | None = None,
    *,
    source: str | None = None,
    on_error: OnError = "fail",
    split: str | None = None,
) -> ReadResult:
    """Read one file (or datasets folder) into a record set."""
    path = Path(path)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if not path.exists():
        raise InputError(path, "no such file or folder")
    fmt = detect_format(path)
    if fmt != "hf" and path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    mapping = mapping or Mapping()
    source = source or _source_name(path)
    if fmt == "jsonl":
        try:
            return _read_jsonl_blocks(path, mapping, source, on_error)
        except _Fallback:
            pass  # a file only polars' whole-file reader reads as before: read it that way
    reader = _READERS[fmt]
    raw = reader(path, on_error, split) if fmt == "hf" else reader(path, on_error)
    if raw.table.height == 0:
        if raw.rejects:  # every row was rejected before it could be read
            raise _no_valid_records(path, raw.rejects)
        raise InputError(path, "the file holds no records")
    recs, problems = to_records(raw.table, mapping, source=source, path=path)
    return _result(path, on_error, recs, problems, raw.locate, raw.unit, raw.rejects, raw.table.height)


def _result(
    path: Path,
    on_error: OnError,
    recs: pl.DataFrame,
    problems: pl.DataFrame,
    locate: Callable[[int], int],
    unit: str,
    read_rejects: list[Reject],
    rows_read: int,
) -> ReadResult:
    """Fail on the first invalid record, or leave the invalid ones out as rejects."""
    bad = problems["reason"].is_not_null()
    rejects = list(read_rejects)
    if bad.any():
        bad_rows = problems.with_row_index("i").filter(bad)
        if on_error == "fail":
            first = bad_rows.row(0, named=True)
            raise InputError(path, first["reason"], line=locate(first["i"]), field=first["field"], unit=unit)
        rejects += [
            Reject(str(path), locate(r["i"]), r["field"], r["reason"]) for r in bad_rows.iter_rows(named=True)
        ]
        recs = recs.filter(~bad)
        rejects.sort(key=lambda r: r.line or 0)  # in file order, whichever check caught them
    rows_in = rows_read + len(read_rejects)
    if recs.height == 0:
        raise _no_valid_records(path, rejects)
    return ReadResult(recs, rejects, rows_in)


def _no_valid_records(path: Path, rejects: list[Reject]) -> InputError:
    return InputError(path, f"no valid records ({len(rejects)} rejected; first: {rejects[0].reason if rejects else '-'})")


def _source_name(path: Path) -> str:
    name = path.name
    for suffix in FORMATS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- JSONL ---------------------------------------------------------------------------


def _read_jsonl(path: Path, on_error: OnError) -> _Raw:
    try:
        table = pl.read_ndjson(path, infer_schema_length=None)
    except Exception:  # malformed somewhere: find where, line by line
        return _scan_jsonl(path, on_error)
    return _Raw(table, _lazy_line_index(path), "line", [])


def _scan_jsonl(path: Path, on_error: OnError) -> _Raw:
    with open(path, "rb") as fh:
        good, lines, rejects = _scan_jsonl_lines(path, fh, 1, on_error)
    if not good:
        return _Raw(pl.DataFrame(), lambda i: lines[i], "line", rejects)
    try:
        table = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    except Exception as exc:  # every line is an object, but the columns' types disagree
        raise InputError(path, f"rows disagree on a column's type: {exc}") from None
    return _Raw(table, lambda i: lines[i], "line", rejects)


def _scan_jsonl_lines(
    path: Path, lines_in: Iterator[bytes], first_line: int, on_error: OnError
) -> tuple[list[bytes], list[int], list[Reject]]:
    """Check JSON Lines one by one: the good lines, their line numbers, and the rejects (or raise at the first bad one)."""
    good: list[bytes] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    for lineno, raw in enumerate(lines_in, first_line):
        if not raw.strip():
            continue
        reason = _jsonl_line_problem(raw)
        if reason is None:
            good.append(raw.rstrip(b"\r\n"))
            lines.append(lineno)
            continue
        if on_error == "fail":
            raise InputError(path, reason, line=lineno)
        rejects.append(Reject(str(path), lineno, None, reason))
    return good, lines, rejects


def _jsonl_line_problem(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start} of the line"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(value, dict):
        return f"expected a JSON object, found {type(value).__name__}"
    return None


def _lazy_line_index(path: Path) -> Callable[[int], int]:
    """Row index -> line number, skipping blank lines; computed only when asked."""
    cache: list[int] = []

    def locate(i: int) -> int:
        if not cache:
            with open(path, "rb") as fh:
                cache.extend(_row_lines(fh, 1))
        return cache[i]

    return locate


def _row_lines(lines_in: Iterator[bytes], first_line: int) -> list[int]:
    """The line number of each row: every line that is not blank."""
    return [n for n, raw in enumerate(lines_in, first_line) if raw.strip()]


# -- JSONL in blocks -----------------------------------------------------------------

# Bytes per block (whole lines; a longer line is a block of its own). A file no larger
# than one block is read whole. The environment variable sets it, for tests and tuning.
BLOCK_BYTES_ENV = "SMALLSET_JSONL_BLOCK_BYTES"
_BLOCK_BYTES = 16 * 1024 * 1024


class _Fallback(Exception):
    """The block reader cannot promise the whole-file reader's result for this file: read it whole."""


def _block_bytes() -> int:
    value = os.environ.get(BLOCK_BYTES_ENV, "")
    if not value:
        return _BLOCK_BYTES
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{BLOCK_BYTES_ENV} must be a positive number of bytes, not {value!r}")
    return int(value)


@dataclass
class _Block:
    """One block of whole lines of a JSONL file, and what it read to."""

    start: int  # byte offset in the file
    size: int
    newlines: int = 0
    first_line: int = 0  # set in file order, once the blocks before it are counted
    records: pl.DataFrame | None = None  # None: no rows
    problems: pl.DataFrame | None = None
    schema: pl.Schema | None = None  # of the raw table
    meta_json: bool | None = None
    lines: list[int] | None = None  # the line of each row, once known
    rejects: tuple[Reject, ...] = ()
    unparsed: bytes | None = None  # a block that did not parse, for the reader to check line by line


@dataclass(frozen=True)
class _Schema:
    """The schema to parse a block with: `exact` (the whole file's) or a guess (the first block's).

    A guess is tried with pyarrow's JSON reader, about three times faster than polars'
    here, told to fail on anything that does not fit the schema exactly (a new key, a
    value of another type: what polars' inference would widen the schema for); the
    block then goes to polars, which infers its own. Where pyarrow does read a block
    under the schema, its values are those polars reads (numbers, escapes, nulls,
    missing keys). An exact schema is tried with pyarrow too, then given to polars.
    """

    polars: pl.Schema | None = None
    arrow: object = None  # a pyarrow schema, or None where pyarrow cannot take this one
    exact: bool = False

    @classmethod
    def of(cls, schema: pl.Schema | None, exact: bool = False) -> _Schema:
        return cls(schema, _arrow_schema(schema) if schema is not None else None, exact)


@dataclass(frozen=True)
class _Job:
    """What every block of one read shares."""

    path: Path
    mapping: Mapping
    source: str
    on_error: OnError


def _read_jsonl_blocks(path: Path, mapping: Mapping, source: str, on_error: OnError) -> ReadResult:
    """Read a JSONL file in blocks of whole lines, to what the whole-file reader reads it to.

    The first block is parsed by polars, which infers its schema; worker threads parse
    the next ones under that schema (see `_Schema`) and map them onto the record model,
    ids included, while this thread takes them in file order and counts their lines.
    A block that does not parse is checked line by line here, so that a bad line is
    named (or skipped) with its exact line number. Afterwards:

    - schema drift (a key only in later lines, a column whose type widens): once a
      block's schema differs from the first rows', the whole file's schema is inferred
      (a pass much lighter than a parse), the blocks still to come are parsed with it,
      and those before whose schema differs from it are parsed again with it;
    - a text `meta` column that holds JSON objects in some blocks only is taken as
      text everywhere, as the whole column would be.

    Raises `_Fallback` where it cannot promise the whole-file result: a file of one
    block, a column-level mapping error (whose message names the whole file's
    columns), skipped lines together with schema drift, a file with no rows.
    """
    block_bytes = _block_bytes()
    if path.stat().st_size <= block_bytes:
        raise _Fallback
    job = _Job(path, mapping, source, on_error)
    workers = max(1, min(pl.thread_pool_size(), 4))
    blocks: list[_Block] = []
    line = 1

    def take(block: _Block, schema: _Schema) -> None:
        nonlocal line
        block.first_line, line = line, line + block.newlines
        if block.unparsed is not None:
            block = _scan_block(job, block, schema)
        blocks.append(block)

    parts = _split_blocks(path, block_bytes)
    first, data = next(parts)
    take(_map_block(job, first, data, _Schema(), None), _Schema())
    del data
    seen = first.schema if first.records is not None else None  # the schema of the first rows
    guess = _Schema.of(seen) if seen is not None else _Schema()
    whole: pl.Schema | None = None  # the whole file's schema, once a block shows that it differs
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(_map_block, job, *part, guess, None) for part in islice(parts, workers + 1))
        while pending:
            block = pending.popleft().result()
            take(block, guess)
            if block.records is not None and seen is None:  # the first rows come after blank or bad lines
                seen = block.schema
                guess = _Schema.of(seen)
            elif block.records is not None and whole is None and block.schema != seen:
                # Schema drift: infer the whole file's schema now (a light pass), so that the
                # blocks still to come are read with it and only those before are read again.
                whole = _whole_file_schema(path, blocks)
                guess = _Schema.of(whole, exact=True)
            part = next(parts, None)
            if part is not None:
                pending.append(pool.submit(_map_block, job, *part, guess, None))
            del block

    def again(block: _Block, schema: _Schema, meta_json: bool | None) -> None:
        block = _map_block(job, block, _block_data(path, block), schema, meta_json)
        if block.unparsed is not None:
            _scan_block(job, block, schema, meta_json)

    if whole is not None and any(b.rejects for b in blocks):
        raise _Fallback  # the whole file's schema is that of its good lines only
    schema = guess
    if whole is not None:
        for block in blocks:
            if block.records is not None and block.schema != whole:
                again(block, schema, None)
    if {b.meta_json for b in blocks if b.records is not None} == {True, False}:
        for block in blocks:  # the whole column is not all JSON objects: take it as text
            if block.records is not None and block.meta_json:
                again(block, schema, False)

    blocks = [b for b in blocks if b.records is not None]
    if not blocks:
        raise _Fallback  # nothing but blank or rejected lines: the whole-file reader says which
    rows = [b.records.height for b in blocks]
    recs = pl.concat([b.records for b in blocks])
    problems = pl.concat([b.problems for b in blocks])
    rejects = [r for b in blocks for r in b.rejects]
    for b in blocks:
        b.records = b.problems = None
    ends = list(accumulate(rows))

    def locate(i: int) -> int:
        k = bisect_right(ends, i)
        block = blocks[k]
        if block.lines is None:
            block.lines = _row_lines(io.BytesIO(_block_data(path, block)), block.first_line)
        return block.lines[i - (ends[k] - rows[k])]

    return _result(path, on_error, recs, problems, locate, "line", rejects, sum(rows))


def _split_blocks(path: Path, block_bytes: int) -> Iterator[tuple[_Block, bytes]]:
    """The file as blocks of whole lines, in order, with their bytes.

    Each block's end is found first (the end of the line that holds its last byte),
    then the block is read in one piece: appending the rest of a line to a block
    would copy the whole block again.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start = 0
        while start < size:
            end = start + block_bytes
            if end < size:
                fh.seek(end - 1)
                fh.readline()  # to the end of the line that holds the block's last byte
                end = fh.tell()
            fh.seek(start)
            data = fh.read(min(end, size) - start)
            if not data:
                return  # the file shrank under us
            yield _Block(start, len(data)), data
            start += len(data)


def _block_data(path: Path, block: _Block) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(block.start)
        return fh.read(block.size)


def _map_block(job: _Job, block: _Block, data: bytes, schema: _Schema, meta_json: bool | None) -> _Block:
    """Parse one block and map it onto the record model, ids included.

    A block that does not parse comes back `unparsed`, for `_scan_block`.
    """
    try:
        raw, block.newlines = _parse_block(data, schema)
    except Exception:  # a bad line somewhere: the reader finds it, once it knows the block's first line
        block.newlines, block.unparsed = data.count(b"\n"), data
        return block
    return _map_raw(job, block, raw, meta_json)


def _scan_block(job: _Job, block: _Block, schema: _Schema, meta_json: bool | None = None) -> _Block:
    """Check an unparsed block line by line: raise at its first bad line, or leave the bad lines out."""
    data, block.unparsed = block.unparsed, None
    good, lines, rejects = _scan_jsonl_lines(job.path, io.BytesIO(data), block.first_line, job.on_error)
    del data
    block.lines, block.rejects = lines, tuple(rejects)
    if not good:  # only blank or bad lines
        block.records = None
        return block
    if not rejects:
        raise _Fallback  # every line is an object, yet the block does not parse
    try:
        raw, _ = _parse_block(b"\n".join(good), schema)
    except Exception:
        raise _Fallback from None
    return _map_raw(job, block, raw, meta_json)


def _map_raw(job: _Job, block: _Block, raw: pl.DataFrame, meta_json: bool | None) -> _Block:
    block.schema = raw.schema
    if raw.height == 0:
        block.records = None
        return block
    try:
        mapped = map_rows(raw, job.mapping, source=job.source, path=job.path, meta_json=meta_json)
    except InputError:
        raise _Fallback from None  # a column-level problem: the whole file's columns name it
    block.records = mapped.records.with_columns(_records.ids(mapped.records)) if mapped.needs_ids else mapped.records
    block.problems, block.meta_json = mapped.problems, mapped.meta_json
    return block


def _arrow_schema(schema: pl.Schema):
    """The pyarrow schema that reads to exactly `schema` in polars, or None.

    Text is read as string views where this pyarrow's JSON reader can: polars stores
    text as views, so the table then becomes a polars frame without a copy of every
    string (about 7% less CPU for the parse and the conversion together).
    """
    import pyarrow as pa

    text = pa.string_view() if _json_reads_string_views() else pa.string()

    def small(t):  # pyarrow's JSON reader takes no large_* types
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return text
        if pa.types.is_large_list(t) or pa.types.is_list(t) or pa.types.is_list_view(t):
            return pa.list_(small(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, small(f.type)) for f in t])
        return t

    try:
        arrow = pl.DataFrame(schema=schema).to_arrow().schema
        arrow = pa.schema([pa.field(f.name, small(f.type)) for f in arrow])
        if pl.from_arrow(pa.Table.from_batches([], schema=arrow)).schema != schema:
            return None
    except Exception:
        return None
    return arrow


@functools.cache
def _json_reads_string_views() -> bool:
    """Whether this pyarrow's JSON reader takes a string-view column in an explicit schema."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        options = pj.ParseOptions(explicit_schema=pa.schema([("a", pa.string_view())]))
        return pj.read_json(pa.BufferReader(b'{"a": "x"}\n'), parse_options=options).column("a").to_pylist() == ["x"]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False


def _parse_block(data: bytes, schema: _Schema) -> tuple[pl.DataFrame, int]:
    """The block as a raw table, and the number of newlines in it."""
    if schema.arrow is not None:
        parsed = _parse_block_arrow(data, schema)
        if parsed is not None:
            return parsed
    if schema.exact:
        df = pl.read_ndjson(io.BytesIO(data), schema=schema.polars)
    else:
        df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    return df, data.count(b"\n")


def _parse_block_arrow(data: bytes, schema: _Schema) -> tuple[pl.DataFrame, int] | None:
    """The block read by pyarrow under `schema`, or None where polars must decide.

    Where pyarrow is more lenient than polars (a line `null`, two objects on one
    line, an object over several lines, bytes that are not UTF-8), the block is
    refused: every line must start with `{`, end with `}` and give one row.
    """
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
            parse_options=pj.ParseOptions(explicit_schema=schema.arrow, unexpected_field_behavior="error"),
        )
        offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)  # UTF-8
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # not exactly this schema, or not valid JSON Lines
    newlines = _one_object_per_line(data, table.num_rows)
    if newlines is None:
        return None
    df = pl.from_arrow(table)
    return (df, newlines) if df.schema == schema.polars else None


def _one_object_per_line(data: bytes, rows: int) -> int | None:
    """The number of newlines in `data`, if it has `rows` lines that each start with `{` and end with `}` (before an optional CR)."""
    if not data:
        return 0 if rows == 0 else None
    ends = _newline_offsets(data)
    newlines = len(ends)
    if data[-1] != 0x0A:
        ends.append(len(data))  # a last line without one
    if len(ends) != rows:
        return None
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.array(ends, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if (starts >= ends).any() or (b[starts] != 0x7B).any():  # a blank line, or one not starting with {
        return None
    last = ends - 1
    last[b[last] == 0x0D] -= 1
    if (last < starts).any() or (b[last] != 0x7D).any():
        return None
    return newlines


def _newline_offsets(data: bytes) -> list[int]:
    """Where each newline is. `bytes.find` skips to the next one with memchr: about 2.5x
    less CPU than numpy's compare-then-nonzero over the whole block, for lines of a few
    hundred bytes."""
    ends: list[int] = []
    find, append = data.find, ends.append
    pos = find(b"\n")
    while pos >= 0:
        append(pos)
        pos = find(b"\n", pos + 1)
    return ends


def _whole_file_schema(path: Path, blocks: list[_Block]) -> pl.Schema:
    """The schema the whole-file reader infers, for a file whose blocks' schemas differ."""
    if any(b.rejects for b in blocks):
        raise _Fallback  # the whole file's schema is that of its good lines only
    try:
        return pl.scan_ndjson(path, infer_schema_length=None).collect_schema()
    except Exception:
        raise _Fallback from None


# -- JSON ----------------------------------------------------------------------------


def _read_json(path: Path, on_error: OnError) -> _Raw:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"invalid UTF-8 at byte {exc.start}", line=data.count(b"\n", 0, exc.start) + 1) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if "\n" in text.strip() and text.lstrip().startswith("{"):
            return _read_jsonl(path, on_error)  # JSON Lines saved with a .json name
        raise InputError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    rows = value
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(path, "expected a JSON array of records, or an object with exactly one list of records")
        rows = value[lists[0]]
    if not isinstance(rows, list):
        raise InputError(path, f"expected a JSON array of records, found {type(rows).__name__}")
    keep, index, rejects = [], [], []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            keep.append(row)
            index.append(i + 1)
        elif on_error == "fail":
            raise InputError(path, f"expected a JSON object, found {type(row).__name__}", line=i + 1, unit="record")
        else:
            rejects.append(Reject(str(path), i + 1, None, f"expected a JSON object, found {type(row).__name__}"))
    table = pl.from_dicts(keep, infer_schema_length=None) if keep else pl.DataFrame()
    return _Raw(table, lambda i: index[i], "record", rejects)


# -- CSV / TSV -----------------------------------------------------------------------


def _read_csv(path: Path, on_error: OnError, separator: str = ",") -> _Raw:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if on_error == "fail" or line == 1:
            raise InputError(path, f"invalid UTF-8 at byte {exc.start}", line=line) from None
        return _read_csv_skipping_bad_utf8(path, data, separator)
    try:
        # Every column as text: labels such as "01" must not become numbers.
        table = pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False)
    except Exception as exc:
        raise InputError(path, f"malformed CSV: {exc}") from None
    return _Raw(_without_blank_rows(table), _lazy_csv_line_index(path, separator), "line", [])


def _without_blank_rows(table: pl.DataFrame) -> pl.DataFrame:
    """Drop rows with no value at all: blank lines, which polars reads as rows of nulls."""
    return table.filter(~pl.all_horizontal(pl.all().fill_null("") == "")) if table.width else table


def _csv_record_lines(fh, separator: str) -> list[int]:
    """The line each record starts on, after the header.

    Quoted cells may span lines; rows with no value are skipped, as `_without_blank_rows` skips them.
    """
    reader = csv.reader(fh, delimiter=separator)
    starts, start = [], 1
    for n, row in enumerate(reader):
        if n and any(row):  # n == 0: the header
            starts.append(start)
        start = reader.line_num + 1
    return starts


def _lazy_csv_line_index(path: Path, separator: str) -> Callable[[int], int]:
    """Row index -> the line its record starts on; computed only when asked."""
    cache: list[int] = []

    def locate(i: int) -> int:
        if not cache:
            with open(path, encoding="utf-8", newline="") as fh:
                cache.extend(_csv_record_lines(fh, separator))
        return cache[i]

    return locate


def _read_csv_skipping_bad_utf8(path: Path, data: bytes, separator: str) -> _Raw:
    """Drop lines that are not UTF-8, then read the rest (line numbers kept)."""
    keep, numbers, rejects = [], [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(Reject(str(path), n, None, f"invalid UTF-8 at byte {exc.start} of the line"))
            continue
        keep.append(raw)
        numbers.append(n)
    text = b"\n".join(keep)
    table = _without_blank_rows(pl.read_csv(io.BytesIO(text), separator=separator, infer_schema=False))
    starts = _csv_record_lines(io.StringIO(text.decode("utf-8"), newline=""), separator)
    return _Raw(table, lambda i: numbers[starts[i] - 1], "line", rejects)


def _read_tsv(path: Path, on_error: OnError) -> _Raw:
    return _read_csv(path, on_error, separator="\t")


# -- Parquet and datasets ------------------------------------------------------------


def _read_parquet(path: Path, on_error: OnError) -> _Raw:
    try:
        table = pl.read_parquet(path)
    except Exception as exc:
        raise InputError(path, f"not a readable Parquet file: {exc}") from None
    return _Raw(table, lambda i: i + 1, "row", [])


def _read_hf(path: Path, on_error: OnError, split: str | None) -> _Raw:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(path, f"not a readable saved dataset: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        chosen = split or ("train" if "train" in ds else names[0] if len(names) == 1 else None)
        if chosen not in ds:
            raise InputError(path, f"choose a split with --split; this dataset has {names}", field="split")
        ds = ds[chosen]
    elif split is not None:
        raise InputError(path, "this saved dataset has no splits; drop --split", field="split")
    table = ds.flatten_indices().data.table if ds._indices is not None else ds.data.table
    return _Raw(pl.from_arrow(table), lambda i: i + 1, "row", [])


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "tsv": _read_tsv,
    "parquet": _read_parquet,
    "hf": _read_hf,
}

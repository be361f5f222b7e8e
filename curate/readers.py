"""Readers: JSONL, JSON, CSV/TSV, Parquet, folders of Parquet shards and saved Hugging Face `datasets` folders.

Every reader produces a raw polars table, which `layouts.to_records` maps onto the
record model. Well-formed files take a fast columnar path; only when that fails is
a file scanned line by line, to name the exact line and field that are wrong. For
JSON the fast path must also be faithful: polars reads a key given twice (keeping
one value) and a list where other rows have text (as the list's JSON) without a
word, so pyarrow, which refuses both, confirms what polars read (`_confirmed`), and
what it does not confirm is checked line by line. CSV that polars cannot read is
read record by record with the csv module, to name the record, the delimiter found
and how to pass another one.

JSON Lines larger than one block go in blocks of whole lines (see `_read_jsonl_blocks`):
worker threads parse blocks (pyarrow under the first block's schema, polars wherever
that would read differently), map them and hash their ids, so that a large file is
read on every core and only a few blocks of raw data are alive at a time. The
records, rejects and errors are those of the whole-file reader, line numbers included.

A folder of Parquet shards (what Ray or Spark write, see `curate.shards`) is one dataset:
polars reads every shard in one scan, after their footers are checked to agree; a row's
position names its shard file and its row there.

With `on_error="fail"` (the default) the first bad row raises `InputError`. With
`on_error="skip"` bad rows are left out and returned as `Reject`s, one reason each.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import json
import os
import re
import tempfile
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from itertools import accumulate, islice
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate import records as _records
from curate.errors import InputError
from curate.layouts import Coerced, CoercedValue, Mapping, json_kind, map_rows, to_records
from curate.shards import SchemaMismatch, common_schema, shard_files

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
    coerced: Coerced | None = None  # values polars read as text that were not (see `layouts.Coerced`)
    file_of: Callable[[int], Path] | None = None  # the file a row index is in, where one table spans several


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "hf"
        if shard_files(path):
            return "shards"
        what = "an empty folder" if not any(path.iterdir()) else \
            "a folder with no Parquet shards (*.parquet; names starting with '_' or '.' are skipped)"
        raise InputError(path, f"{what}, and not a saved Hugging Face dataset (no dataset_info.json or dataset_dict.json)")
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
    delimiter: str | None = None,
    encoding: str | None = None,
) -> ReadResult:
    """Read one file (or a folder of Parquet shards, or a datasets folder) into a record set.

    `delimiter` is a CSV/TSV file's (default: ',' and a tab); `encoding` a text file's
    (default: UTF-8, whose byte-order mark only CSV may start with; `utf-8-sig` takes one anywhere).
    """
    path = Path(path)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if not path.exists():
        raise InputError(path, "no such file or folder")
    fmt = detect_format(path)
    if fmt not in ("hf", "shards") and path.stat().st_size == 0:
        raise InputError(path, "the file is empty")
    if delimiter is not None:
        delimiter = _delimiter(path, delimiter)
    mapping = mapping or Mapping()
    source = source or _source_name(path)
    if encoding is not None and fmt in ("jsonl", "json", "csv", "tsv") and _codec(path, encoding) != "utf-8":
        return _read_transcoded(path, encoding, mapping, source, on_error, delimiter)
    if fmt == "jsonl":
        try:
            return _read_jsonl_blocks(path, mapping, source, on_error)
        except _Fallback:
            pass  # a file only polars' whole-file reader reads as before: read it that way
    reader = _READERS[fmt]
    if fmt == "hf":
        raw = reader(path, on_error, split)
    elif fmt in ("csv", "tsv") and delimiter is not None:
        raw = _read_csv(path, on_error, delimiter)
    else:
        raw = reader(path, on_error)
    if raw.table.height == 0:
        if raw.rejects:  # every row was rejected before it could be read
            raise _no_valid_records(path, raw.rejects)
        raise InputError(path, "the shards hold no records" if fmt == "shards" else "the file holds no records")
    recs, problems = to_records(raw.table, mapping, source=source, path=path, coerced=raw.coerced)
    return _result(path, on_error, recs, problems, raw.locate, raw.unit, raw.rejects, raw.table.height, raw.file_of)


def _result(
    path: Path,
    on_error: OnError,
    recs: pl.DataFrame,
    problems: pl.DataFrame,
    locate: Callable[[int], int],
    unit: str,
    read_rejects: list[Reject],
    rows_read: int,
    file_of: Callable[[int], Path] | None = None,
) -> ReadResult:
    """Fail on the first invalid record, or leave the invalid ones out as rejects (each named by the
    file it is in: `file_of(row index)` where the table spans several shards)."""
    bad = problems["reason"].is_not_null()
    rejects = list(read_rejects)
    where = file_of or (lambda i: path)
    if bad.any():
        bad_rows = problems.with_row_index("i").filter(bad)
        if on_error == "fail":
            first = bad_rows.row(0, named=True)
            raise InputError(where(first["i"]), first["reason"], line=locate(first["i"]), field=first["field"], unit=unit)
        rejects += [
            Reject(str(where(r["i"])), locate(r["i"]), r["field"], r["reason"]) for r in bad_rows.iter_rows(named=True)
        ]
        recs = recs.filter(~bad)
        if file_of is None:
            rejects.sort(key=lambda r: r.line or 0)  # in file order, whichever check caught them
    rows_in = rows_read + len(read_rejects)
    if recs.height == 0:
        raise _no_valid_records(path, rejects)
    return ReadResult(recs, rejects, rows_in)


def _delimiter(path: Path, text: str) -> str:
    """One character; 'tab' (or a written \\t) is a tab."""
    value = "\t" if text.lower() in ("tab", "\\t") else text
    if len(value) != 1 or value in "\"\r\n":
        raise InputError(path, f"the delimiter must be one character other than a quote or a line end (or 'tab'), "
                         f"not {text!r}", field="delimiter")
    return value


def _codec(path: Path, encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InputError(path, f"unknown encoding {encoding!r} (try utf-8, utf-8-sig, utf-16, latin-1, cp1252)",
                         field="encoding") from None


def _read_transcoded(
    path: Path, encoding: str, mapping: Mapping, source: str, on_error: OnError, delimiter: str | None
) -> ReadResult:
    """A text file in another encoding: decoded, written as UTF-8 to a temporary file (outside any
    output folder), read from there; errors and rejects name the file given, with its line numbers."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise InputError(path, f"not valid {encoding} at byte {exc.start}", line=line) from None
    del data
    with tempfile.TemporaryDirectory(prefix="smallset-decoded-") as folder:
        tmp = Path(folder) / path.name
        tmp.write_bytes(text.encode("utf-8"))
        del text
        try:
            result = read_records(tmp, mapping, source=source, on_error=on_error, delimiter=delimiter)
        except InputError as err:
            raise replace(err, path=path) from None
    result.rejects = [replace(r, file=str(path)) for r in result.rejects]
    return result


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
    """The fast path: polars reads the whole file, and pyarrow confirms it (see `_confirmed`);
    anything else is checked line by line."""
    data = path.read_bytes()
    try:
        table = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except Exception:  # malformed somewhere: find where, line by line
        return _scan_jsonl(path, data, on_error)
    if not _confirmed(data, table.schema):
        return _scan_jsonl(path, data, on_error, table)
    return _Raw(table, _lazy_line_index(path), "line", [])


def _scan_jsonl(path: Path, data: bytes, on_error: OnError, table: pl.DataFrame | None = None) -> _Raw:
    """The file line by line (`_jsonl_line_problem`); `table`: what polars read of it, if it did."""
    good, lines, rejects = _scan_jsonl_lines(path, io.BytesIO(data), 1, on_error)
    del data
    if not good:
        return _Raw(pl.DataFrame(), lambda i: lines[i], "line", rejects)
    if table is None or rejects:
        table, good, lines, more = _parse_lines(path, good, lines, on_error)
        rejects = sorted(rejects + more, key=lambda r: r.line or 0)
        if table is None:
            return _Raw(pl.DataFrame(), lambda i: lines[i], "line", rejects)
    return _Raw(table, lambda i: lines[i], "line", rejects, _coerced(good, table.schema))


def _parse_lines(
    path: Path, good: list[bytes], lines: list[int], on_error: OnError, unit: str = "line"
) -> tuple[pl.DataFrame | None, list[bytes], list[int], list[Reject]]:
    """Good JSON lines as one table; a line that polars cannot read is named (or, skipping, left out).

    Every line is JSON here, but polars may still refuse one (a list of turns whose
    contents are text in one turn and a list in another) or a line that clashes
    with those before it: the first prefix of lines that fails ends with it.
    """
    rejects: list[Reject] = []
    while good:
        try:
            return _ndjson(good), good, lines, rejects
        except Exception as exc:
            k = _first_unreadable(good)
            if k is None:  # no prefix fails, yet the whole does: not one line's doing
                raise InputError(path, f"rows disagree on a column's type: {_first_line(exc)}") from None
            field, reason = _unreadable(good, k, exc)
        if on_error == "fail":
            raise InputError(path, reason, line=lines[k], field=field, unit=unit)
        rejects.append(Reject(str(path), lines[k], field, reason))
        good, lines = good[:k] + good[k + 1:], lines[:k] + lines[k + 1:]
    return None, good, lines, rejects


def _ndjson(good: list[bytes]) -> pl.DataFrame:
    return pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)


def _fails(good: list[bytes]) -> bool:
    try:
        _ndjson(good)
    except Exception:
        return True
    return False


def _first_unreadable(good: list[bytes]) -> int | None:
    """The index of the line that ends the shortest prefix polars cannot read."""
    return _first_failing_prefix(len(good), lambda k: _fails(good[:k]))


def _first_failing_prefix(n: int, fails: Callable[[int], bool]) -> int | None:
    """The index of the item that ends the shortest prefix of `n` items that `fails` (bisection), or None."""
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1 if n and fails(lo) else None


def _unreadable(good: list[bytes], k: int, exc: Exception) -> tuple[str | None, str]:
    """Why line `k` cannot be read, in words: a kind clash inside it, or with the lines before."""
    value = json.loads(good[k])
    clash = _kind_clash(value)
    if clash is not None:
        return clash
    if k and not _fails(good[k:k + 1]):
        return None, f"its values' types clash with the lines before it: {_first_line(exc)}"
    return None, f"cannot be read as a row: {_first_line(exc)}"


def _kind_clash(value, path: str = "") -> tuple[str, str] | None:
    """In a list of objects, one key that holds text in one object and a list or an object in another."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _kind_clash(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    if not isinstance(value, list):
        return None
    objects = [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
    for key in dict.fromkeys(k for _, v in objects for k in v):
        texts = [i for i, v in objects if isinstance(v.get(key), (str, int, float, bool))]
        boxes = [i for i, v in objects if isinstance(v.get(key), (list, dict))]
        if texts and boxes:
            field = path.split(".")[0].split("[")[0]
            kind = json_kind(value[boxes[0]][key])
            reason = f"{path}[{boxes[0]}].{key} is {kind}, expected text (as in {path}[{texts[0]}])"
            if kind == "a list of content parts":
                reason += "; join the parts' text into one string"
            return field, reason
    for i, item in enumerate(value):
        found = _kind_clash(item, f"{path}[{i}]")
        if found is not None:
            return found
    return None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _confirmed(data: bytes, schema: pl.Schema) -> bool:
    """Whether pyarrow reads `data` under `schema` without complaint.

    pyarrow refuses what polars reads silently: a key twice in one object (polars
    keeps the first value) and a list or an object where the schema has text
    (polars writes it as JSON text, where rows mix the two). A file it confirms
    needs no line-by-line check; one it does not is checked line by line.
    """
    return _arrow_table(data, _arrow_schema(schema)) is not None


def _coerced(good: list[bytes], schema: pl.Schema) -> Coerced:
    """Per row, the values that were lists or objects where polars holds text (see `layouts.Coerced`)."""
    top = [k for k, t in schema.items() if t == pl.String]
    items = [k for k, t in schema.items() if t == pl.List(pl.String)]  # lists of text, where some items were not
    nested = {
        k: keys for k, t in schema.items()
        if isinstance(t, pl.List) and isinstance(t.inner, pl.Struct)
        and (keys := [f.name for f in t.inner.fields if f.dtype == pl.String])
    }
    found: Coerced = {}
    if not top and not items and not nested:
        return found
    for i, raw in enumerate(good):
        row = json.loads(raw)
        where = [CoercedValue(k, None, None, json_kind(row[k]), json.dumps(row[k])) for k in top
                 if isinstance(row.get(k), (list, dict))]
        for k in items:
            values = row.get(k)
            if isinstance(values, list):
                where += [CoercedValue(k, j, None, json_kind(v), json.dumps(v)) for j, v in enumerate(values)
                          if isinstance(v, (list, dict))]
        for k, keys in nested.items():
            turns = row.get(k)
            if not isinstance(turns, list):
                continue
            where += [CoercedValue(k, j, key, json_kind(turn[key]), None) for j, turn in enumerate(turns)
                      if isinstance(turn, dict) for key in keys if isinstance(turn.get(key), (list, dict))]
        if where:
            found[i] = where
    return found


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
        problem = _jsonl_line_problem(raw, lineno)
        if problem is None:
            good.append(raw.rstrip(b"\r\n"))
            lines.append(lineno)
            continue
        field, reason = problem
        if on_error == "fail":
            raise InputError(path, reason, line=lineno, field=field)
        rejects.append(Reject(str(path), lineno, field, reason))
    return good, lines, rejects


_BOMS = {codecs.BOM_UTF8: "utf-8-sig", codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16"}


class _Object(dict):
    """A JSON object that knows whether a key was given twice in it (`twice`: the first such key)."""

    twice: str | None = None


class _Constant:
    """NaN, Infinity or -Infinity where they stood: not JSON, though Python's module reads them."""

    def __init__(self, name: str) -> None:
        self.name = name


def _marking_pairs(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.twice = next(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


# Python's JSON module, strict where it is lenient (NaN, Infinity, a key given twice): what it
# would take is marked instead, so that `_marked` can say which record (and key) holds it.
_MARKING_JSON = json.JSONDecoder(object_pairs_hook=_marking_pairs, parse_constant=_Constant)


def _marked(value) -> tuple[str | None, str] | None:
    """The first key given twice, or the first NaN/Infinity, in a value read by `_MARKING_JSON`: (field, reason)."""
    try:
        return _first_mark(value, None)
    except RecursionError:  # the decoder had a little more stack to spare
        return None, _TOO_DEEP


def _first_mark(value, key: str | None) -> tuple[str | None, str] | None:
    if isinstance(value, _Constant):
        return key, _constant_reason(value.name)
    if isinstance(value, dict):
        if getattr(value, "twice", None) is not None:
            return value.twice, _twice_reason(value.twice)
        items = value.items()
    elif isinstance(value, list):
        items = ((key, v) for v in value)
    else:
        return None
    for k, v in items:
        found = _first_mark(v, k)
        if found is not None:
            return found
    return None


# The JSON module recurses once per level; it stops near Python's recursion limit (1,000).
_MAX_DEPTH = 900
_TOO_DEEP = f"nested too deeply to read (lists or objects inside each other, over about {_MAX_DEPTH} levels)"


def _twice_reason(key: str) -> str:
    return f"the key '{key}' appears twice in one object; keep one"


def _constant_reason(name: str) -> str:
    return f"{name} is not JSON: write null (no value) or a number"


def _jsonl_line_problem(raw: bytes, lineno: int = 0) -> tuple[str | None, str] | None:
    """Why one line is not a JSON object (field, reason), or None."""
    if lineno == 1:
        for bom, encoding in _BOMS.items():
            if raw.startswith(bom):
                name = encoding.removesuffix("-sig").upper()
                return None, f"the file starts with a {name} byte-order mark; pass --encoding {encoding}"
    nul = raw.find(b"\x00")
    if nul >= 0:
        return None, f"a NUL byte at byte {nul} of the line: not UTF-8 text (UTF-16? pass --encoding utf-16)"
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")  # the line's end is not part of its JSON: columns count on this line
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start} of the line (another encoding? pass --encoding)"
    try:
        value = _MARKING_JSON.decode(text)
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
        if "\r" in text:
            reason += "; a lone carriage return (\\r) ends a line here: JSON Lines end lines with \\n"
        return None, reason
    except RecursionError:
        return None, _TOO_DEEP
    if not isinstance(value, dict):
        return None, f"expected a JSON object, found {type(value).__name__}"
    return _marked(value)


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
    layout: str | None = None  # the layout its rows were read as
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
    columns), skipped lines together with schema drift, a file with no rows, a
    block of good JSON lines that polars still cannot read, blocks whose first rows
    hold different layouts (the file's first row decides).
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
    if len({b.layout for b in blocks}) > 1:
        raise _Fallback  # blocks that start with rows of different layouts: the file's first row decides
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

    A block that does not parse, or that pyarrow does not confirm (see `_confirmed`),
    comes back `unparsed`, for `_scan_block`.
    """
    try:
        raw, block.newlines, confirmed = _parse_block(data, schema)
    except Exception:  # a bad line somewhere: the reader finds it, once it knows the block's first line
        confirmed = False
    if not confirmed:
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
    try:
        raw, _, _ = _parse_block(b"\n".join(good), schema)
    except Exception:
        raise _Fallback from None  # every line is JSON, yet the block does not parse: the whole-file reader says why
    return _map_raw(job, block, raw, meta_json, _coerced(good, raw.schema))


def _map_raw(job: _Job, block: _Block, raw: pl.DataFrame, meta_json: bool | None, coerced: Coerced | None = None) -> _Block:
    block.schema = raw.schema
    if raw.height == 0:
        block.records = None
        return block
    try:
        mapped = map_rows(raw, job.mapping, source=job.source, path=job.path, meta_json=meta_json, coerced=coerced)
    except InputError:
        raise _Fallback from None  # a column-level problem: the whole file's columns name it
    block.records = mapped.records.with_columns(_records.ids(mapped.records)) if mapped.needs_ids else mapped.records
    block.problems, block.meta_json, block.layout = mapped.problems, mapped.meta_json, mapped.layout
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


def _parse_block(data: bytes, schema: _Schema) -> tuple[pl.DataFrame, int, bool]:
    """The block as a raw table, the number of newlines in it, and whether pyarrow confirms it (`_confirmed`)."""
    if schema.arrow is not None:
        parsed = _parse_block_arrow(data, schema)
        if parsed is not None:
            return (*parsed, True)
    if schema.exact:
        df = pl.read_ndjson(io.BytesIO(data), schema=schema.polars)
    else:
        df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    return df, data.count(b"\n"), _confirmed(data, df.schema)


def _parse_block_arrow(data: bytes, schema: _Schema) -> tuple[pl.DataFrame, int] | None:
    """The block read by pyarrow under `schema`, or None where polars must decide.

    Where pyarrow is more lenient than polars (a line `null`, two objects on one
    line, an object over several lines, bytes that are not UTF-8), the block is
    refused: every line must start with `{`, end with `}` and give one row.
    """
    import pyarrow as pa

    table = _arrow_table(data, schema.arrow)
    if table is None:
        return None  # not exactly this schema, or not valid JSON Lines
    try:
        offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    newlines = _one_object_per_line(data, table.num_rows)
    if newlines is None:
        return None
    df = pl.from_arrow(table)
    return (df, newlines) if df.schema == schema.polars else None


def _arrow_table(data: bytes, arrow_schema):
    """pyarrow's read of `data` under `arrow_schema` (a key outside it is an error), or None where it fails."""
    import pyarrow as pa
    import pyarrow.json as pj

    if arrow_schema is None:
        return None
    try:
        return pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
            parse_options=pj.ParseOptions(explicit_schema=arrow_schema, unexpected_field_behavior="error"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


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
    """A JSON array of records (or an object holding one list of them), read by Python's JSON
    module, strictly (see `_MARKING_JSON`); the records then go through polars as JSON Lines do."""
    data = path.read_bytes()
    _check_text_bytes(path, data)
    if data.startswith(codecs.BOM_UTF8):
        raise InputError(path, "the file starts with a UTF-8 byte-order mark; pass --encoding utf-8-sig", line=1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"invalid UTF-8 at byte {exc.start}{_ENCODING_HINT}",
                         line=data.count(b"\n", 0, exc.start) + 1) from None
    try:
        value = _MARKING_JSON.decode(text)
    except json.JSONDecodeError as exc:
        if "\n" in text.strip() and text.lstrip().startswith("{"):
            return _read_jsonl(path, on_error)  # JSON Lines saved with a .json name
        raise InputError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise InputError(path, _TOO_DEEP, line=_deep_line(text)) from None
    del text
    rows = value
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(path, "expected a JSON array of records, or an object with exactly one list of records")
        rows = value[lists[0]]
    if not isinstance(rows, list):
        raise InputError(path, f"expected a JSON array of records, found {type(rows).__name__}")
    good, index, rejects = [], [], []
    for i, row in enumerate(rows, 1):
        problem = _marked(row) if isinstance(row, dict) else (None, f"expected a JSON object, found {type(row).__name__}")
        if problem is None:
            good.append(json.dumps(row).encode())
            index.append(i)
        elif on_error == "fail":
            raise InputError(path, problem[1], line=i, field=problem[0], unit="record")
        else:
            rejects.append(Reject(str(path), i, problem[0], problem[1]))
    del rows, value
    if not good:
        return _Raw(pl.DataFrame(), lambda i: index[i], "record", rejects)
    table, good, index, more = _parse_lines(path, good, index, on_error, unit="record")
    rejects = sorted(rejects + more, key=lambda r: r.line or 0)
    if table is None:
        return _Raw(pl.DataFrame(), lambda i: index[i], "record", rejects)
    return _Raw(table, lambda i: index[i], "record", rejects, _coerced(good, table.schema))


def _deep_line(text: str) -> int | None:
    """The line on which lists and objects nest deeper than `_MAX_DEPTH` (strings skipped)."""
    depth = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > _MAX_DEPTH:
                return text.count("\n", 0, m.start()) + 1
        elif c in "]}":
            depth -= 1
    return None


# -- CSV / TSV -----------------------------------------------------------------------


def _read_csv(path: Path, on_error: OnError, separator: str = ",") -> _Raw:
    """The fast path: polars reads the whole file; where it cannot, `_scan_csv` says why, record by record."""
    data = path.read_bytes()
    _check_text_bytes(path, data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if on_error == "fail" or line == 1:
            raise InputError(path, f"invalid UTF-8 at byte {exc.start}{_ENCODING_HINT}", line=line) from None
        return _scan_csv(path, data, separator, on_error)
    try:
        # Every column as text: labels such as "01" must not become numbers.
        table = pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False)
    except Exception:
        return _scan_csv(path, data, separator, on_error)
    if any("\r" in c for c in table.columns):  # polars ends lines with \n only: a header run on over lone CRs
        raise InputError(path, _LONE_CR, line=1)
    table = _without_blank_rows(table)
    if table.height == 0:  # a quote that never closes can hide every row in the header: the scan tells
        return _scan_csv(path, data, separator, on_error)
    if table.width == 1:
        _check_one_column(path, table.columns[0], separator)
    if any(re.search(r"_duplicated_\d+$", c) for c in table.columns):  # polars renames a repeated name
        header = next(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=separator))
        _check_header_names(path, header)
    return _Raw(table, _lazy_csv_line_index(path, separator), "line", [])


def _check_header_names(path: Path, names: list[str]) -> None:
    """A column named twice: polars would rename the second one, and the data would go to `meta` under a made-up name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(path, f"the header names the column {name!r} twice; rename one", line=1)
        seen.add(name)


def _check_text_bytes(path: Path, data: bytes) -> None:
    """Text that is not UTF-8 in a way a decoder may not notice: a UTF-16 byte-order mark, NUL bytes."""
    for bom in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        if data.startswith(bom):
            raise InputError(path, "the file starts with a UTF-16 byte-order mark; pass --encoding utf-16", line=1)
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise InputError(path, f"a NUL byte at byte {nul}: not UTF-8 text (UTF-16? pass --encoding utf-16)", line=line)


_ENCODING_HINT = "; is the file in another encoding? pass --encoding (latin-1, cp1252, utf-16, ...)"


_LONE_CR = "a lone carriage return (\\r) ends a line: CSV lines end with \\n or \\r\\n (convert the file's line endings)"
_DELIMITERS = (",", ";", "\t", "|")


def _shown(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _sniff_delimiter(header: str) -> str | None:
    """The delimiter a header line seems to use: the most frequent of `_DELIMITERS`, if any."""
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _delimiter_hint(header: str, separator: str) -> str:
    found = _sniff_delimiter(header)
    if found is not None and found != separator:
        return f"; the header looks {_shown(found)}-delimited: pass --delimiter {_shown(found)}"
    return f"; quote the cells that hold a {_shown(separator)}, or pass --delimiter if the file uses another one"


def _check_one_column(path: Path, name: str, separator: str) -> None:
    """A header read as one column that holds another delimiter: the file uses that one."""
    found = _sniff_delimiter(name)
    if found is not None and found != separator:
        raise InputError(
            path, f"the header is one column, {name!r}, with delimiter {_shown(separator)}; "
            f"the file looks {_shown(found)}-delimited: pass --delimiter {_shown(found)}", line=1)


@dataclass
class _CsvRecord:
    start: int  # the line it starts on, in the text scanned
    end: int
    row: list[str] | None  # None: the csv module could not read it
    reason: str | None = None
    line: int | None = None  # where to blame, when not `start` (the line a quote opens on)


def _scan_csv(path: Path, data: bytes, separator: str, on_error: OnError) -> _Raw:
    """A CSV file that polars does not read: record by record with the csv module, to name each bad one.

    A bad record is one whose line is not UTF-8, one with more fields than the header,
    one with a quote that does not close (blamed on the line the quote opens on) or
    with text after a closing quote, or one polars still cannot read. They raise, or
    (skipping) are left out; polars then reads the rest.
    """
    lone_cr = re.search(rb"\r(?!\n)", data)
    if lone_cr:
        raise InputError(path, _LONE_CR, line=data.count(b"\n", 0, lone_cr.start()) + 1)
    keep, numbers, rejects = [], [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"invalid UTF-8 at byte {exc.start} of the line"
            if on_error == "fail" or n == 1:
                raise InputError(path, reason + _ENCODING_HINT, line=n) from None
            rejects.append(Reject(str(path), n, None, reason))
            continue
        keep.append(raw)
        numbers.append(n)
    lines = io.StringIO(b"\n".join(keep).decode("utf-8"), newline="").readlines()
    records = _csv_records(lines, separator)
    header, body = records[0], records[1:]
    if header.row is None:
        raise InputError(path, f"the header: {header.reason}", line=numbers[(header.line or header.start) - 1])
    _check_header_names(path, header.row)
    width = len(header.row)
    good: list[_CsvRecord] = []
    for rec in body:
        if rec.row is not None and len(rec.row) > width:
            rec.reason = (f"{len(rec.row)} fields where the header has {width} (delimiter {_shown(separator)})"
                          + _delimiter_hint(lines[0], separator))
        if rec.reason is None:
            if any(rec.row):
                good.append(rec)
            continue
        line = numbers[(rec.line or rec.start) - 1]
        if on_error == "fail":
            raise InputError(path, rec.reason, line=line)
        rejects.append(Reject(str(path), line, None, rec.reason))
    while True:
        text = "".join(lines[header.start - 1:header.end] + [x for r in good for x in lines[r.start - 1:r.end]])
        try:
            table = _without_blank_rows(pl.read_csv(io.BytesIO(text.encode()), separator=separator, infer_schema=False))
        except Exception as exc:
            k = _first_unreadable_record(lines, header, good, separator)
            if k is None or (k == 0 and _header_fails(lines, header, separator)):
                raise InputError(path, f"malformed CSV: {_first_line(exc)}") from None
            rec = good.pop(k)
            body_text = "".join(lines[rec.start - 1:rec.end])
            reason = ("a '\"' inside a cell that does not start with one: quote the whole cell and double the quotes "
                      "inside it" if '"' in body_text else f"polars cannot read this record: {_first_line(exc)}")
            if on_error == "fail":
                raise InputError(path, reason, line=numbers[rec.start - 1]) from None
            rejects.append(Reject(str(path), numbers[rec.start - 1], None, reason))
            continue
        break
    if table.height != len(good):
        raise InputError(path, "malformed CSV: the csv module and polars read different records")
    if table.width == 1:
        _check_one_column(path, table.columns[0], separator)
    starts = [numbers[r.start - 1] for r in good]
    rejects.sort(key=lambda r: r.line or 0)
    return _Raw(table, lambda i: starts[i], "line", rejects)


def _csv_records(lines: list[str], separator: str) -> list[_CsvRecord]:
    """Every record of the text: its lines, its fields, or why the csv module cannot read it."""
    reader = csv.reader(iter(lines), delimiter=separator, strict=True)
    records, start = [], 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            end = reader.line_num
            if "unexpected end of data" in str(err) or end >= len(lines):
                records.append(_CsvRecord(start, end, None, "a quoted cell opens here and never closes (a '\"' is missing)",
                                          _open_quote_line(lines, start, separator)))
                break
            records.append(_CsvRecord(start, end, None, f"text after a quoted cell's closing quote ({err}): quote the "
                                      "whole cell and double the quotes inside it"))
            start = end + 1
            continue
        records.append(_CsvRecord(start, reader.line_num, row))
        start = reader.line_num + 1
    return records or [_CsvRecord(1, 1, [])]


def _open_quote_line(lines: list[str], start: int, separator: str) -> int:
    """The line on which the quote left open at the end of the text opened, from line `start` on."""
    opened, quoted, at_cell = start, False, True
    for n, line in enumerate(lines[start - 1:], start):
        i = 0
        while i < len(line):
            c = line[i]
            if quoted:
                if c == '"':
                    if line[i + 1:i + 2] == '"':
                        i += 1
                    else:
                        quoted = False
            elif c == '"' and at_cell:
                quoted, opened = True, n
            at_cell = not quoted and c in (separator, "\r", "\n")
            i += 1
    return opened


def _header_fails(lines: list[str], header: _CsvRecord, separator: str) -> bool:
    try:
        pl.read_csv(io.BytesIO("".join(lines[header.start - 1:header.end]).encode()), separator=separator, infer_schema=False)
    except Exception:
        return True
    return False


def _first_unreadable_record(lines: list[str], header: _CsvRecord, good: list[_CsvRecord], separator: str) -> int | None:
    """The index of the record that ends the shortest prefix polars cannot read."""
    head = lines[header.start - 1:header.end]

    def fails(k: int) -> bool:
        text = "".join(head + [x for r in good[:k] for x in lines[r.start - 1:r.end]])
        try:
            pl.read_csv(io.BytesIO(text.encode()), separator=separator, infer_schema=False)
        except Exception:
            return True
        return False

    return _first_failing_prefix(len(good), fails)


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


def _read_tsv(path: Path, on_error: OnError) -> _Raw:
    return _read_csv(path, on_error, separator="\t")


# -- Parquet and datasets ------------------------------------------------------------


def _read_parquet(path: Path, on_error: OnError) -> _Raw:
    try:
        table = pl.read_parquet(path)
    except Exception as exc:
        raise InputError(path, f"not a readable Parquet file: {exc}") from None
    return _Raw(table, lambda i: i + 1, "row", [])


def _read_shards(path: Path, on_error: OnError) -> _Raw:
    """A folder of Parquet shards as one table: shards in path order, rows in file order.

    The shards' footers are read first, so that a shard whose columns differ from the first
    one's is named with the column (`shards.common_schema`); then polars reads every shard
    in one scan.
    """
    import pyarrow.parquet as pq

    shards = shard_files(path)
    schemas, rows = [], []
    for shard in shards:
        try:
            schemas.append(pl.read_parquet_schema(shard))
            rows.append(pq.read_metadata(shard).num_rows)
        except Exception as exc:
            raise InputError(shard, f"not a readable Parquet file: {_first_line(exc)}") from None
    try:
        schema = common_schema(schemas, f"the first shard {shards[0].relative_to(path)}")
    except SchemaMismatch as exc:
        raise InputError(shards[exc.index], exc.reason, field=exc.column) from None
    try:
        table = pl.scan_parquet(shards, schema=schema, glob=False).collect()
    except Exception as exc:
        raise InputError(path, f"the shards cannot be read as one table: {_first_line(exc)}") from None
    starts = [0, *accumulate(rows)][:-1]

    def shard_of(i: int) -> int:
        return bisect_right(starts, i) - 1

    return _Raw(table, lambda i: i - starts[shard_of(i)] + 1, "row", [], file_of=lambda i: shards[shard_of(i)])


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
    table = ds.with_format("arrow")[:]  # the rows as a pyarrow table, a saved selection's index mapping applied
    return _Raw(pl.from_arrow(table), lambda i: i + 1, "row", [])


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "tsv": _read_tsv,
    "parquet": _read_parquet,
    "shards": _read_shards,
    "hf": _read_hf,
}

"""Readers: JSONL, JSON, CSV/TSV, Parquet and saved Hugging Face `datasets` folders.

Every reader produces a raw polars table, which `layouts.to_records` maps onto the
record model. Well-formed files take a fast columnar path; only when that fails is
a file scanned line by line, to name the exact line and field that are wrong.

With `on_error="fail"` (the default) the first bad row raises `InputError`. With
`on_error="skip"` bad rows are left out and returned as `Reject`s, one reason each.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from curate.errors import InputError
from curate.layouts import Mapping, to_records

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
    reader = _READERS[fmt]
    raw = reader(path, on_error, split) if fmt == "hf" else reader(path, on_error)
    if raw.table.height == 0:
        if raw.rejects:  # every row was rejected before it could be read
            raise _no_valid_records(path, raw.rejects)
        raise InputError(path, "the file holds no records")
    recs, problems = to_records(raw.table, mapping or Mapping(), source=source or _source_name(path), path=path)
    bad = problems["reason"].is_not_null()
    rejects = list(raw.rejects)
    if bad.any():
        bad_rows = problems.with_row_index("i").filter(bad)
        if on_error == "fail":
            first = bad_rows.row(0, named=True)
            raise InputError(path, first["reason"], line=raw.locate(first["i"]), field=first["field"], unit=raw.unit)
        rejects += [
            Reject(str(path), raw.locate(r["i"]), r["field"], r["reason"]) for r in bad_rows.iter_rows(named=True)
        ]
        recs = recs.filter(~bad)
        rejects.sort(key=lambda r: r.line or 0)  # in file order, whichever check caught them
    rows_in = raw.table.height + len(raw.rejects)
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
    good: list[bytes] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
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
    if not good:
        return _Raw(pl.DataFrame(), lambda i: lines[i], "line", rejects)
    try:
        table = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    except Exception as exc:  # every line is an object, but the columns' types disagree
        raise InputError(path, f"rows disagree on a column's type: {exc}") from None
    return _Raw(table, lambda i: lines[i], "line", rejects)


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
                cache.extend(n for n, raw in enumerate(fh, 1) if raw.strip())
        return cache[i]

    return locate


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

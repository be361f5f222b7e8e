"""Layouts: how the common dataset shapes map onto the record model.

Detection looks at column names; an explicit `Mapping` names the layout and which
input column plays which part, for anything else. Columns that no layout field
uses are kept, as JSON, in `meta`: reading never loses data silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import polars as pl

from curate import records
from curate.errors import InputError


@dataclass(frozen=True)
class Layout:
    """A known dataset shape: the logical fields it needs and may have."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    example: str

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("messages", ("messages",), ("label",), '{"messages": [{"role": "user", "content": ...}, ...]}'),
        Layout("sharegpt", ("conversations",), ("system", "label"), '{"conversations": [{"from": "human", "value": ...}]}'),
        Layout("prompt_completion", ("prompt", "completion"), ("system", "label"), '{"prompt": ..., "completion": ...}'),
        Layout("alpaca", ("instruction", "output"), ("input", "system", "label"), '{"instruction": ..., "input": ..., "output": ...}'),
        Layout("text_label", ("text", "label"), ("system",), '{"text": ..., "label": ...}'),
    )
}

# Column names accepted, during detection only, for a layout field.
_ALIASES = {"completion": ("completion", "response")}

# ShareGPT and friends name roles differently.
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "system": "system",
}


@dataclass
class Mapping:
    """Which layout to read, and which input column plays each of its fields.

    `layout=None` detects the layout from the column names. `columns` maps a
    layout field to an input column, e.g. `{"prompt": "question", "completion": "answer"}`;
    fields left out use their own name. With columns but no layout, the layout is
    the one whose required fields the columns name.
    """

    layout: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, layout: str | None, pairs: tuple[str, ...] | list[str]) -> Mapping:
        """Build from CLI values: `--layout NAME` and repeated `--map FIELD=COLUMN`."""
        columns = {}
        for pair in pairs:
            fld, sep, col = pair.partition("=")
            if not sep or not fld or not col:
                raise InputError("--map", f"bad mapping '{pair}': expected FIELD=COLUMN")
            columns[fld.strip()] = col.strip()
        return cls(layout=layout, columns=columns)


def detect_layout(columns: list[str]) -> tuple[Layout, dict[str, str]] | None:
    """The first layout whose required fields are all present, with its column names."""
    found = candidate_layouts(columns)
    return found[0] if found else None


def candidate_layouts(columns: list[str]) -> list[tuple[Layout, dict[str, str]]]:
    """Every layout whose required fields are all present, in detection order, with its column names."""
    present = set(columns)
    found = []
    for layout in LAYOUTS.values():
        chosen = {}
        for fld in layout.fields:
            col = next((c for c in _ALIASES.get(fld, (fld,)) if c in present), None)
            if col:
                chosen[fld] = col
        if all(f in chosen for f in layout.required):
            found.append((layout, chosen))
    return found


def resolve(
    mapping: Mapping, columns: list[str], path: Path | str | None, raw: pl.DataFrame | None = None
) -> tuple[Layout, dict[str, str]]:
    """Decide the layout and the column of each field, or say precisely what is missing.

    Where the columns fit several layouts (a file that mixes them has the columns of
    each), the layout detected is that of the first row that holds one whole (see
    `_first_row_layout`), so that the rows of the other layout are the ones blamed.
    """
    for fld in mapping.columns:
        if not any(fld in layout.fields for layout in LAYOUTS.values()):
            known = sorted({f for layout in LAYOUTS.values() for f in layout.fields})
            raise InputError(path, f"unknown mapping field; known fields: {', '.join(known)}", field=fld)
    if mapping.layout is None and not mapping.columns:
        found = candidate_layouts(columns)
        if len(found) > 1 and raw is not None:
            return _first_row_layout(raw, found)
        detected = found[0] if found else None
        if detected is None:
            shapes = "; ".join(f"{name}: {layout.example}" for name, layout in LAYOUTS.items())
            raise InputError(
                path,
                f"no known layout in columns {columns}. Known layouts are {shapes}. "
                "Name the columns with --map FIELD=COLUMN (and --layout NAME).",
            )
        return detected
    layout = _pick_layout(mapping, columns, path)
    chosen: dict[str, str] = {}
    for fld in layout.fields:
        col = mapping.columns.get(fld, fld)
        if col in columns:
            chosen[fld] = col
        elif fld in mapping.columns:
            raise InputError(path, f"the mapping names column '{col}', which is not in the input (columns: {columns})", field=fld)
        elif fld in layout.required:
            raise InputError(path, f"missing column '{col}' required by layout '{layout.name}' (columns: {columns})", field=fld)
    return layout, chosen


def _complete(layout: Layout, cols: dict[str, str]) -> pl.Expr:
    """Per row: every required field of `layout` has a value."""
    return pl.all_horizontal([pl.col(cols[f]).is_not_null() for f in layout.required])


def _first_row_layout(
    raw: pl.DataFrame, found: list[tuple[Layout, dict[str, str]]]
) -> tuple[Layout, dict[str, str]]:
    """Of the layouts the columns fit, the first one that the first row with a whole layout holds."""
    flags = raw.select([_complete(layout, cols).alias(layout.name) for layout, cols in found])
    first = flags.select(pl.any_horizontal(pl.all()).arg_true().first()).item()
    if first is None:
        return found[0]
    row = flags.row(first, named=True)
    return next((layout, cols) for layout, cols in found if row[layout.name])


def _pick_layout(mapping: Mapping, columns: list[str], path: Path | str | None) -> Layout:
    if mapping.layout is not None:
        if mapping.layout not in LAYOUTS:
            raise InputError(path, f"unknown layout '{mapping.layout}'; known: {', '.join(LAYOUTS)}", field="layout")
        return LAYOUTS[mapping.layout]
    named = set(mapping.columns)
    for layout in LAYOUTS.values():
        available = named | set(columns)
        if named <= set(layout.fields) and set(layout.required) <= available:
            return layout
    raise InputError(
        path,
        f"cannot tell the layout from the mapped fields {sorted(named)} and columns {columns}; "
        f"add --layout ({', '.join(LAYOUTS)})",
        field="layout",
    )


@dataclass
class Mapped:
    """A raw table mapped onto the record model, all but the ids.

    `records` has the core columns in order; unless `needs_ids` is false (the input
    was already a record set, whose ids are kept), its `id` column is a placeholder
    that `records.with_ids` (or `records.ids`) fills.
    `meta_json` says whether a text `meta` column was taken as JSON objects as is
    (None when the input has no such column to decide on).
    """

    records: pl.DataFrame
    problems: pl.DataFrame
    needs_ids: bool
    meta_json: bool | None = None
    layout: str | None = None  # the layout read (None: a record set, read as is)


class CoercedValue(NamedTuple):
    """A value that was not text in the input, though the table holds it as text.

    JSON with a list in some rows and text in others is read by polars as text, each
    list written as (not always valid) JSON. Readers that see the input say where.
    """

    column: str
    item: int | None  # its index in a list the column holds (None: the column's own value)
    key: str | None  # its key in that item, an object (None: the item itself)
    kind: str  # "a list", "an object", ... (`json_kind`)
    json: str | None  # the value as the input wrote it, where `key` is None


Coerced = dict[int, list[CoercedValue]]  # per row index


def to_records(
    raw: pl.DataFrame, mapping: Mapping, *, source: str, path: Path | str | None = None, coerced: Coerced | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Map a raw table onto the record model.

    Returns the record set (same row order) and a problems table with, per row,
    the `field` and `reason` that make it an invalid record (both null when it is
    valid). Column-level problems raise `InputError` at once.
    """
    mapped = map_rows(raw, mapping, source=source, path=path, coerced=coerced)
    recs = records.with_ids(mapped.records) if mapped.needs_ids else mapped.records
    return recs, mapped.problems


def map_rows(
    raw: pl.DataFrame,
    mapping: Mapping,
    *,
    source: str,
    path: Path | str | None = None,
    meta_json: bool | None = None,
    coerced: Coerced | None = None,
) -> Mapped:
    """`to_records` without the ids: every other column, and the problems table.

    Row by row, so that a table read in blocks maps block by block to the same
    rows as the whole table would (given the same schema and the same `meta_json`).
    `meta_json` forces the one decision that looks at a whole column: whether a text
    `meta` column holds JSON objects (None: decide from `raw`); the layout detected
    among several that the columns fit is the other (the block reader checks that
    every block detected the same). `coerced` names the values a reader saw were not
    text where the table holds text.

    A value is never turned into text that it was not: a list or an object where a
    field takes text (a label, a prompt, a turn's content) makes its row invalid,
    rather than becoming the JSON of the list. That includes the OpenAI content-parts
    form (`"content": [{"type": "text", "text": ...}, ...]`): the parts may be images
    or audio, which a text record cannot hold, and how text parts join (a space, a
    newline, nothing) is the user's call and changes the id; the reason says to join them.
    """
    if records.is_record_set(raw) and mapping.layout is None and not mapping.columns:
        return Mapped(records.order_columns(raw), _problems(raw, None), needs_ids=False)
    layout, cols = resolve(mapping, raw.columns, path, raw)
    used = set(cols.values())
    checks: list[tuple[str | None, pl.Expr]] = _other_layout_checks(raw, layout, cols, mapping)
    raw, type_checks = _checked_types(raw, layout, cols, coerced or {})
    checks += type_checks
    messages = _MESSAGE_BUILDERS[layout.name](raw, cols, path)
    label = pl.col(cols["label"]).cast(pl.String) if "label" in cols else pl.lit(None, dtype=pl.String)
    if "source" in raw.columns and "source" not in used and raw.schema["source"] == pl.String:
        src = pl.col("source").fill_null(source)
        used.add("source")
    else:
        src = pl.lit(source)
    meta, meta_json = _meta(raw, used, meta_json)
    out = raw.select(
        pl.lit("").alias("id"), messages.alias("messages"), label.alias("label"), src.alias("source"), meta.alias("meta")
    )
    checks += _missing_value_checks(layout, cols)
    first = raw.select(_first_failing(checks)) if checks else None
    problems = _problems(out, first, turns=layout.name in ("messages", "sharegpt"))
    return Mapped(out, problems, needs_ids=True, meta_json=meta_json, layout=layout.name)


def _meta(raw: pl.DataFrame, used: set[str], meta_json: bool | None = None) -> tuple[pl.Expr, bool | None]:
    """Every column no field uses, as one JSON object per row.

    A `meta` object column (as smallset's own JSONL writes it) is flattened into
    that object, and an `id` column is kept unless the input is a smallset
    dataset, whose ids are recomputed from the content anyway. The flag says
    whether a text `meta` column, the only other column left, was taken as the
    JSON objects it holds (None: there was no such decision to make); a flag given
    makes that decision instead of the column's values.
    """
    ours = {"id", "messages", "source"} <= set(raw.columns)
    extras = [c for c in raw.columns if c not in used and c != "meta" and not (ours and c == "id")]
    parts = [pl.col(c) for c in extras]
    decide = meta_json
    meta_json = None
    if "meta" in raw.columns and "meta" not in used:
        dtype = raw.schema["meta"]
        if dtype == pl.String and not extras:
            meta_json = _holds_json_objects(raw["meta"]) if decide is None else decide
        if isinstance(dtype, pl.Struct):
            inner = [f.name for f in dtype.fields]
            parts = [pl.col(c).alias(f"input_{c}") if c in inner else pl.col(c) for c in extras]
            parts += [pl.col("meta").struct.field(name) for name in inner]
        elif not meta_json:
            parts.append(pl.col("meta"))  # plain text (or a value of any other type): kept under its name
        else:
            return pl.col("meta").fill_null("{}"), meta_json
    return (pl.struct(parts).struct.json_encode() if parts else pl.lit("{}")), meta_json


def _holds_json_objects(values: pl.Series) -> bool:
    """True when every value of a text column is a JSON object (as smallset's `meta` is)."""
    try:
        values.str.json_decode(pl.Struct({}))  # validates JSON objects without inferring their keys
    except pl.exceptions.ComputeError:
        return False
    return True


def _problems(out: pl.DataFrame, missing: pl.DataFrame | None, turns: bool = False) -> pl.DataFrame:
    """The layout's own checks come first (another layout, a value that is not text, a missing
    value); then what the record model itself rejects, and (`turns`: rows read from an input
    that holds turns) a blank user turn."""
    reason = records.problems(out)
    if turns:
        reason = reason.fill_null(out.select(_blank_user()).to_series())
    table = pl.DataFrame({"reason": reason}).select(
        pl.when(pl.col("reason").is_not_null()).then(pl.lit("messages")).alias("field"), "reason"
    )
    if missing is None:
        return table
    found = pl.col("reason").is_not_null()
    return missing.select(
        pl.when(found).then(pl.col("field")).otherwise(pl.lit(table["field"])).alias("field"),
        pl.coalesce("reason", pl.lit(table["reason"])).alias("reason"),
    )


def _blank_user() -> pl.Expr:
    """The first user turn with no text but white space: a turn with nothing to answer.

    Checked where the input writes turns itself (chat and ShareGPT layouts): a turn
    with nothing in it is a broken conversation. Not in the flat layouts (see
    `_missing_value_checks`), not for an assistant turn (`curate filter`'s
    `empty_response`, a curation decision with a reason code), and not on a record set
    smallset wrote: the regex costs about a fifth of reading one from Parquet.
    """
    el = pl.element().struct
    blank = pl.col("messages").list.eval((el.field("role") == "user") & el.field("content").str.contains(r"^\s*$"))
    return pl.when(blank.list.any()).then(pl.format("messages[{}] (user) is empty", blank.list.arg_max()))


def _first_failing(checks: list[tuple[str | None, pl.Expr]]) -> list[pl.Expr]:
    """Per row, the field and reason of the first check that fails (a reason that is not null)."""
    fld_expr = pl.lit(None, dtype=pl.String)
    why_expr = pl.lit(None, dtype=pl.String)
    for fld, reason in reversed(checks):
        failed = reason.is_not_null()
        fld_expr = pl.when(failed).then(pl.lit(fld, dtype=pl.String)).otherwise(fld_expr)
        why_expr = pl.when(failed).then(reason).otherwise(why_expr)
    return [fld_expr.alias("field"), why_expr.alias("reason")]


def _missing_value_checks(layout: Layout, cols: dict[str, str]) -> list[tuple[str | None, pl.Expr]]:
    """Per required scalar field: no value where there must be one.

    A value that is only white space is a row for curation to judge (`curate filter`
    drops it with a reason code, `dedup` names it), as it always was; the bundled
    help-desk export holds one on purpose.
    """
    return [(fld, pl.when(pl.col(cols[fld]).is_null()).then(pl.lit(f"no value in column '{cols[fld]}'")))
            for fld in layout.required if fld not in _TURNS_FIELDS]


def _other_layout_checks(
    raw: pl.DataFrame, layout: Layout, cols: dict[str, str], mapping: Mapping
) -> list[tuple[str | None, pl.Expr]]:
    """A row that holds another detected layout whole, but not the file's: the line where the layout changes."""
    if mapping.layout is not None or mapping.columns:
        return []
    others = [(o, c) for o, c in candidate_layouts(raw.columns) if o.name != layout.name]
    if not others:
        return []
    mine = _complete(layout, cols)
    reason = pl.lit(None, dtype=pl.String)
    for other, other_cols in reversed(others):
        reason = pl.when(~mine & _complete(other, other_cols)).then(pl.lit(
            f"this row has the '{other.name}' layout, the file's first rows '{layout.name}': "
            "one layout per file (split the file, or choose with --layout and --map)"
        )).otherwise(reason)
    return [(None, reason)]


_TURNS_FIELDS = ("messages", "conversations")


def _kind(dtype: pl.DataType) -> str | None:
    """What a column's values are where they are not text (None: text, or a scalar that reads as text)."""
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = dtype.inner
        if isinstance(inner, pl.Struct) and {"type", "text"} <= {f.name for f in inner.fields}:
            return "a list of content parts"
        return "a list"
    if isinstance(dtype, pl.Struct):
        return "an object"
    if dtype == pl.Binary:
        return "bytes"
    if dtype == pl.Object:
        return "a Python object"
    return None


def _not_text(kind: str, what: str) -> str:
    reason = f"{what} is {kind}, expected text"
    return reason + ("; join the parts' text into one string" if kind == "a list of content parts" else "")


def _checked_types(
    raw: pl.DataFrame, layout: Layout, cols: dict[str, str], coerced: Coerced
) -> tuple[pl.DataFrame, list[tuple[str | None, pl.Expr]]]:
    """Rows whose fields hold something other than text (or turns) where the layout takes it, and why.

    Returns the table with those values set to null (so that nothing is cast from
    them) and the checks that name them, per field in the layout's order.
    """
    checks: list[tuple[str | None, pl.Expr]] = []
    replace: dict[str, pl.Series | pl.Expr] = {}
    for fld in layout.fields:
        if fld not in cols:
            continue
        col = cols[fld]
        dtype = raw.schema[col]
        if fld in _TURNS_FIELDS:
            fixed, reason = _checked_turns(raw, fld, col, coerced)
            if fixed is not None:
                replace[col] = fixed
            if reason is not None:
                checks.append((fld, reason))
            continue
        kind = _kind(dtype)
        what = "the value" if col == fld else f"the value in column '{col}'"
        if kind is not None:
            checks.append((fld, pl.when(pl.col(col).is_not_null()).then(pl.lit(_not_text(kind, what)))))
            replace[col] = pl.lit(None, dtype=pl.String)
            continue
        found = {i: _not_text(v.kind, what) for i, where in coerced.items()
                 for v in where if v.column == col and v.item is None}
        if found:
            checks.append((fld, _scattered(raw.height, found)))
    # Evaluated on the values as read, before those that are not text are set to null.
    checks = [(fld, pl.lit(raw.select(reason.alias("reason")).to_series())) for fld, reason in checks]
    if replace:
        raw = raw.with_columns([v.alias(c) for c, v in replace.items()])
    return raw, checks


def _scattered(height: int, reasons: dict[int, str]) -> pl.Expr:
    """A reason per row, at the rows given; null elsewhere."""
    values = pl.Series("reason", [None] * height, dtype=pl.String)
    values = values.scatter(list(reasons), list(reasons.values()))
    return pl.lit(values)


_TURN_KEYS = (("role", "from"), ("content", "value"))


def _checked_turns(
    raw: pl.DataFrame, fld: str, col: str, coerced: Coerced
) -> tuple[pl.Series | pl.Expr | None, pl.Expr | None]:
    """A column of turns: the column to read instead (None: as it is) and the reason per bad row."""
    dtype = raw.schema[col]
    if dtype == pl.String:  # JSON text (a CSV cell), or JSON whose rows mix lists and text: the lists as written
        values = raw[col].to_list()
        for i, where in coerced.items():
            values[i] = next((v.json for v in where if v.column == col and v.item is None), values[i])
        return _decoded_turns(values, col, fld, {})
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    if not isinstance(inner, pl.Struct):  # not turns, in some rows at least: each row says what it holds
        return _decoded_turns(raw[col].to_list(), col, fld, coerced, as_text=False)
    names = {f.name: f.dtype for f in inner.fields}
    bad = {k: _kind(names[k]) for key in _TURN_KEYS for k in key if k in names and _kind(names[k]) is not None}
    role_key = next((k for k in _TURN_KEYS[0] if k in names), None)
    reasons: list[pl.Expr] = []
    el = pl.element().struct
    for key, kind in bad.items():
        has = pl.col(col).list.eval(el.field(key).is_not_null())
        at = has.list.arg_max()
        role = pl.lit("?")
        if role_key and role_key not in bad:
            role = pl.col(col).list.get(at).struct.field(role_key).cast(pl.String)
        reasons.append(pl.when(has.list.any()).then(
            pl.format(f"{fld}[{{}}] ({{}}): {_not_text(kind, key)}", at, role.fill_null("?"))))
    found = {i: v for i, where in coerced.items()
             if (v := next((v for v in where if v.column == col and v.item is not None and v.key in names), None))}
    if found:
        roles = raw[col].gather(list(found)).to_list()
        by_row = {}
        for (i, v), turns in zip(found.items(), roles):
            role = turns[v.item].get(role_key) if role_key and turns and v.item < len(turns) else None
            by_row[i] = f"{fld}[{v.item}] ({role or '?'}): {_not_text(v.kind, v.key)}"
        reasons.append(_scattered(raw.height, by_row))
    fixed = None
    if bad:
        fixed = pl.col(col).list.eval(pl.struct(
            [pl.lit(None, dtype=pl.String).alias(k) if k in bad else el.field(k) for k in names]))
    return fixed, (pl.coalesce(reasons) if reasons else None)


_TURN_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "from": pl.String, "value": pl.String}))


def _decoded_turns(
    values: list, col: str, fld: str, coerced: Coerced, as_text: bool = True
) -> tuple[pl.Series, pl.Expr | None]:
    """Turns that polars does not hold as a list of objects: checked row by row, then decoded.

    `as_text`: the values are JSON text (a CSV cell, or JSON whose rows mix lists and
    text); otherwise they are Python values (a list of text, a number), where only the
    items `coerced` names were objects. Checked value by value in Python (such columns
    are small, or broken), so that one bad value names its own row.
    """
    reasons: dict[int, str] = {}
    texts: list[str | None] = []
    for i, value in enumerate(values):
        if value is not None and not as_text:
            boxed = {v.item: v.json for v in coerced.get(i, ()) if v.column == col and v.item is not None and v.key is None}
            value, reason = _boxed_turns(value, boxed, fld)
            if reason is None:
                value = json.dumps(value)
            else:
                reasons[i], value = reason, None
        reason = None if value is None else _turns_text_problem(value, fld)
        if reason is not None:
            reasons[i] = reason
        texts.append(None if i in reasons else value)
    decoded = pl.Series(col, texts, dtype=pl.String).str.json_decode(_TURN_DTYPE)
    return decoded, (_scattered(len(values), reasons) if reasons else None)


def _boxed_turns(value, boxed: dict[int, str], fld: str) -> tuple[list | None, str | None]:
    """A Python value as a list of turns; `boxed`: the items polars holds as text that were objects, as written."""
    if not isinstance(value, list):
        return None, f"expected a list of turns, found {json_kind(value)}"
    turns = []
    for i, item in enumerate(value):
        if i in boxed:
            item = json.loads(boxed[i])
        if not isinstance(item, dict):
            return None, f"{fld}[{i}] is {json_kind(item)}, expected an object with role and content"
        turns.append(item)
    return turns, None


def _turns_text_problem(text: str, fld: str) -> str | None:
    try:
        turns = json.loads(text)
    except (ValueError, RecursionError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        return f"expected a list of turns, found the text {shown!r}"
    if not isinstance(turns, list):
        return f"expected a list of turns, found {json_kind(turns)}"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"{fld}[{i}] is {json_kind(turn)}, expected an object with role and content"
        role = turn.get("role", turn.get("from"))
        for keys in _TURN_KEYS:
            key = next((k for k in keys if k in turn), None)
            if key is not None and isinstance(turn[key], (list, dict)):
                return f"{fld}[{i}] ({role if isinstance(role, str) else '?'}): {_not_text(json_kind(turn[key]), key)}"
    return None


def json_kind(value) -> str:
    """A JSON value's kind, in words."""
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "type" in v for v in value):
            return "a list of content parts"
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    return "a number" if not isinstance(value, bool) else "true or false"


def _turn(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.cast(pl.String).alias("content"))


def _with_system(turns: list[pl.Expr], cols: dict[str, str]) -> pl.Expr:
    """A list of turns, preceded by a system turn on rows where the system column has a value."""
    body = pl.concat_list(turns)
    if "system" not in cols:
        return body
    system = pl.col(cols["system"]).cast(pl.String)
    with_sys = pl.concat_list([_turn("system", system), *turns])
    return pl.when(system.is_not_null() & (system != "")).then(with_sys).otherwise(body)


def _chat_list(raw: pl.DataFrame, column: str, path) -> pl.Expr:
    """A list of {role, content} structs from a column of turns (chat or ShareGPT keys; `_checked_turns` decoded text)."""
    dtype = raw.schema[column]
    col = pl.col(column)
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    if not isinstance(inner, pl.Struct):
        raise InputError(path, f"column '{column}' must hold a list of turns, found {dtype}", field=column)
    names = {f.name for f in inner.fields}
    role_keys = [k for k in _TURN_KEYS[0] if k in names]
    content_keys = [k for k in _TURN_KEYS[1] if k in names]
    if not role_keys or not content_keys:
        raise InputError(path, f"turns in column '{column}' need role/content (or from/value) keys, found {sorted(names)}", field=column)
    el = pl.element().struct

    def either(keys: list[str]) -> pl.Expr:  # JSON text decodes to both keys: a turn has the one it wrote
        return pl.coalesce([el.field(k).cast(pl.String) for k in keys])

    return col.list.eval(
        pl.struct(either(role_keys).replace(ROLE_ALIASES).alias("role"), either(content_keys).alias("content"))
    )


def _messages(raw, cols, path):
    return _chat_list(raw, cols["messages"], path)


def _sharegpt(raw, cols, path):
    turns = _chat_list(raw, cols["conversations"], path)
    if "system" not in cols:
        return turns
    system = pl.col(cols["system"]).cast(pl.String)
    return pl.when(system.is_not_null() & (system != "")).then(
        pl.concat_list([pl.concat_list([_turn("system", system)]), turns])
    ).otherwise(turns)


def _prompt_completion(raw, cols, path):
    return _with_system([_turn("user", pl.col(cols["prompt"])), _turn("assistant", pl.col(cols["completion"]))], cols)


def _alpaca(raw, cols, path):
    prompt = pl.col(cols["instruction"]).cast(pl.String)
    if "input" in cols:
        extra = pl.col(cols["input"]).cast(pl.String)
        prompt = pl.when(extra.is_not_null() & (extra.str.strip_chars() != "")).then(prompt + "\n\n" + extra).otherwise(prompt)
    return _with_system([_turn("user", prompt), _turn("assistant", pl.col(cols["output"]))], cols)


def _text_label(raw, cols, path):
    return _with_system([_turn("user", pl.col(cols["text"])), _turn("assistant", pl.col(cols["label"]))], cols)


_MESSAGE_BUILDERS = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "alpaca": _alpaca,
    "text_label": _text_label,
}

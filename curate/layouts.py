"""Layouts: how the common dataset shapes map onto the record model.

Detection looks at column names; an explicit `Mapping` names the layout and which
input column plays which part, for anything else. Columns that no layout field
uses are kept, as JSON, in `meta`: reading never loses data silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
                raise InputError(None, f"bad mapping '{pair}': expected FIELD=COLUMN", field=pair)
            columns[fld.strip()] = col.strip()
        return cls(layout=layout, columns=columns)


def detect_layout(columns: list[str]) -> tuple[Layout, dict[str, str]] | None:
    """The first layout whose required fields are all present, with its column names."""
    present = set(columns)
    for layout in LAYOUTS.values():
        chosen = {}
        for fld in layout.fields:
            found = next((c for c in _ALIASES.get(fld, (fld,)) if c in present), None)
            if found:
                chosen[fld] = found
        if all(f in chosen for f in layout.required):
            return layout, chosen
    return None


def resolve(mapping: Mapping, columns: list[str], path: Path | str | None) -> tuple[Layout, dict[str, str]]:
    """Decide the layout and the column of each field, or say precisely what is missing."""
    for fld in mapping.columns:
        if not any(fld in layout.fields for layout in LAYOUTS.values()):
            known = sorted({f for layout in LAYOUTS.values() for f in layout.fields})
            raise InputError(path, f"unknown mapping field; known fields: {', '.join(known)}", field=fld)
    if mapping.layout is None and not mapping.columns:
        detected = detect_layout(columns)
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


def to_records(
    raw: pl.DataFrame, mapping: Mapping, *, source: str, path: Path | str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Map a raw table onto the record model.

    Returns the record set (same row order) and a problems table with, per row,
    the `field` and `reason` that make it an invalid record (both null when it is
    valid). Column-level problems raise `InputError` at once.
    """
    mapped = map_rows(raw, mapping, source=source, path=path)
    recs = records.with_ids(mapped.records) if mapped.needs_ids else mapped.records
    return recs, mapped.problems


def map_rows(
    raw: pl.DataFrame,
    mapping: Mapping,
    *,
    source: str,
    path: Path | str | None = None,
    meta_json: bool | None = None,
) -> Mapped:
    """`to_records` without the ids: every other column, and the problems table.

    Row by row, so that a table read in blocks maps block by block to the same
    rows as the whole table would (given the same schema and the same `meta_json`).
    `meta_json` forces the one decision that looks at a whole column: whether a text
    `meta` column holds JSON objects (None: decide from `raw`).
    """
    if records.is_record_set(raw) and mapping.layout is None and not mapping.columns:
        return Mapped(records.order_columns(raw), _problems(raw, None), needs_ids=False)
    layout, cols = resolve(mapping, raw.columns, path)
    used = set(cols.values())
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
    return Mapped(out, _problems(out, raw.select(_missing_value_exprs(layout, cols))), needs_ids=True, meta_json=meta_json)


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


def _problems(out: pl.DataFrame, missing: pl.DataFrame | None) -> pl.DataFrame:
    """Missing required values come first; then what the record model itself rejects."""
    reason = records.problems(out)
    table = pl.DataFrame({"reason": reason}).select(
        pl.when(pl.col("reason").is_not_null()).then(pl.lit("messages")).alias("field"), "reason"
    )
    if missing is None:
        return table
    return missing.select(
        pl.coalesce("field", pl.lit(table["field"])).alias("field"),
        pl.coalesce("reason", pl.lit(table["reason"])).alias("reason"),
    )


def _missing_value_exprs(layout: Layout, cols: dict[str, str]) -> list[pl.Expr]:
    """Per row, the first required scalar field that has no value, and why."""
    fld_expr = pl.lit(None, dtype=pl.String)
    why_expr = pl.lit(None, dtype=pl.String)
    for fld in reversed([f for f in layout.required if f not in ("messages", "conversations")]):
        empty = pl.col(cols[fld]).is_null()
        fld_expr = pl.when(empty).then(pl.lit(fld)).otherwise(fld_expr)
        why_expr = pl.when(empty).then(pl.lit(f"no value in column '{cols[fld]}'")).otherwise(why_expr)
    return [fld_expr.alias("field"), why_expr.alias("reason")]


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
    """A list of {role, content} structs from a column of turns (chat or ShareGPT keys)."""
    dtype = raw.schema[column]
    col = pl.col(column)
    if dtype == pl.String:  # CSV cells holding JSON text
        col = col.str.json_decode(pl.List(pl.Struct({"role": pl.String, "content": pl.String, "from": pl.String, "value": pl.String})))
        dtype = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "from": pl.String, "value": pl.String}))
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    if not isinstance(inner, pl.Struct):
        raise InputError(path, f"column '{column}' must hold a list of turns, found {dtype}", field=column)
    names = {f.name for f in inner.fields}
    role_key = "role" if "role" in names else "from" if "from" in names else None
    content_key = "content" if "content" in names else "value" if "value" in names else None
    if role_key is None or content_key is None:
        raise InputError(path, f"turns in column '{column}' need role/content (or from/value) keys, found {sorted(names)}", field=column)
    el = pl.element().struct
    return col.list.eval(
        pl.struct(
            el.field(role_key).cast(pl.String).replace(ROLE_ALIASES).alias("role"),
            el.field(content_key).cast(pl.String).alias("content"),
        )
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

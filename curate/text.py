"""Text for matching: which parts of a record to compare, normalized so trivial variants match.

Dedup, decontamination and filters all compare records through `match_text`, so
that "the same text" means one thing everywhere.
"""

from __future__ import annotations

import unicodedata

import polars as pl

from curate.records import normalize_text

FIELDS = ("system", "user", "assistant", "label")
# The system turn is left out by default: a long system prompt shared by many rows
# would make unrelated rows look alike.
DEFAULT_FIELDS = ("user", "assistant", "label")


def parse_fields(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """`"user,assistant"` or a sequence -> validated field names."""
    if value is None:
        return DEFAULT_FIELDS
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [n for n in names if n not in FIELDS]
    if unknown or not names:
        raise ValueError(f"unknown field(s) {unknown or names}; choose from {', '.join(FIELDS)}")
    return tuple(names)


def field_text(fields: tuple[str, ...] = DEFAULT_FIELDS) -> pl.Expr:
    """The raw text of the chosen fields: contents of turns with those roles, then the label."""
    roles = [f for f in fields if f != "label"]
    el = pl.element().struct
    parts = []
    if roles:
        parts.append(
            pl.col("messages")
            .list.eval(pl.when(el.field("role").is_in(roles)).then(el.field("content")).drop_nulls())
            .list.join("\n")
        )
    if "label" in fields:
        parts.append(pl.col("label").fill_null(""))
    return pl.concat_str(parts, separator="\n").str.strip_chars()


def match_text(fields: tuple[str, ...] = DEFAULT_FIELDS) -> pl.Expr:
    """`field_text`, then NFKC, lower case and collapsed whitespace: `normalize` on a column."""
    return normalize_text(field_text(fields)).str.to_lowercase()


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, ends stripped: `match_text` on one string
    (up to the order of lower-casing), for code that works on Python strings (MinHash shingles), so that
    "the same text" means one thing across dedup methods."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())

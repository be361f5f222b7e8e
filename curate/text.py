"""Text for matching: which parts of a record to compare, normalized so trivial variants match.

Dedup, decontamination and filters all compare records through `match_text`, so
that "the same text" means one thing everywhere. What normalization does is one
setting (`NORMALIZATIONS`), shared by exact and near dedup and decontamination: by
default datatrove's `TextNormConfig` without its number folding (lower case,
punctuation removed, diacritics folded, whitespace collapsed), so that `"Refund."` and
`"refund"` are one word and shingles are over words, not words with commas attached.
Numbers are kept by default because in short task rows they carry the meaning ("What is
2+3?" and "What is 4+5?" are two examples); `digits` adds datatrove's folding, right for
web-scale documents where numbers are noise.
"""

from __future__ import annotations

import unicodedata

import polars as pl

from curate.records import normalize_text

FIELDS = ("system", "user", "assistant", "label")
# The system turn is left out by default: a long system prompt shared by many rows
# would make unrelated rows look alike.
DEFAULT_FIELDS = ("user", "assistant", "label")
AUTO = "auto"
"""Fields chosen by task (`task_fields`): the input text for classification rows, else user and assistant."""

NORMALIZATIONS = ("lower", "punct", "digits", "accents")
"""What `match_text` may do besides NFKC and collapsing whitespace (always done): lower case, remove
punctuation and symbols, turn every number into 0, fold diacritics (é -> e)."""
DEFAULT_NORMALIZATION = ("lower", "punct", "accents")
BEFORE_NORMALIZATION = ("lower",)
"""smallset's matching before normalization was a setting (`--normalize lower`)."""


def parse_normalization(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """`"lower,punct"`, `"none"` or a sequence -> validated normalization names, in canonical order."""
    if value is None:
        return DEFAULT_NORMALIZATION
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in NORMALIZATIONS]
    if unknown or not names:
        raise ValueError(f"unknown normalization(s) {unknown or names}; choose from {', '.join(NORMALIZATIONS)}, or none")
    return tuple(n for n in NORMALIZATIONS if n in names)


def parse_fields_or_auto(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """`parse_fields`, with "auto" (or None) meaning fields by task (`task_fields`)."""
    if value is None or (isinstance(value, str) and value.strip() == AUTO) or (not isinstance(value, str) and list(value) == [AUTO]):
        return None
    return parse_fields(value)


def classification_row() -> pl.Expr:
    """Per row: it has a label and its reply, if any, is that label (a text + label row)."""
    el = pl.element().struct
    reply = pl.col("messages").list.eval(pl.when(el.field("role") == "assistant").then(el.field("content")).drop_nulls()).list.last()
    same = reply.is_null() | (reply.str.strip_chars() == pl.col("label").str.strip_chars())
    return (pl.col("label").is_not_null() & same).fill_null(False)


def is_classification(df: pl.DataFrame) -> bool:
    """Every row has a label and its reply, if any, is that label (text + label data)."""
    if df.height == 0 or df["label"].null_count() == df.height or df["label"].null_count():
        return False
    return df.select(classification_row().all()).item()


def task_fields(df: pl.DataFrame) -> tuple[str, ...]:
    """What duplicates are judged on when the user did not say: the input text for classification rows (two
    rows with one text and two labels are a label conflict, not two examples), else the user and assistant turns."""
    return ("user",) if is_classification(df) else ("user", "assistant")


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


def match_text(fields: tuple[str, ...] = DEFAULT_FIELDS, normalization: tuple[str, ...] = BEFORE_NORMALIZATION) -> pl.Expr:
    """`field_text`, then NFKC and collapsed whitespace, and each of `normalization` (`NORMALIZATIONS`)."""
    text = normalize_text(field_text(fields))
    if "lower" in normalization:
        text = text.str.to_lowercase()
    if "accents" in normalization:
        text = text.str.normalize("NFD").str.replace_all(r"\p{Mn}+", "").str.normalize("NFC")
    if "digits" in normalization:
        text = text.str.replace_all(r"\d+", "0")
    if "punct" in normalization:
        text = text.str.replace_all(r"[\p{P}\p{S}]+", "")
    if normalization:
        text = text.str.replace_all(r"\s+", " ").str.strip_chars()
    return text


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, ends stripped: `match_text` on one string
    (up to the order of lower-casing), for code that works on Python strings (MinHash shingles), so that
    "the same text" means one thing across dedup methods."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())

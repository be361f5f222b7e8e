"""The record model: one normalized, columnar schema that every stage reads and writes.

A record set is a `polars.DataFrame` with these core columns:

=========  ===================================  =============================================
column     type                                 meaning
=========  ===================================  =============================================
id         str                                  hash of the normalized content (messages + label)
messages   list[struct{role: str, content: str}] the conversation; roles are system/user/assistant
label      str (nullable)                       a class label, for classification tasks
source     str                                  where the row came from (file stem, synth task...)
meta       str (a JSON object)                  anything else: unmapped input columns, provenance
=========  ===================================  =============================================

Stages add their own columns next to these (scores, flags, outcomes) and keep the
columns they do not know. `meta` is stored as JSON text so that rows from
different sources, with different keys, live in one table without a schema fight.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import polars as pl

ROLES = ("system", "user", "assistant")
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
CORE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "messages": pl.List(MESSAGE),
    "label": pl.String(),
    "source": pl.String(),
    "meta": pl.String(),
}
CORE_COLUMNS = tuple(CORE_SCHEMA)

# Separators that cannot appear in normalized text, so that distinct contents never
# produce the same canonical string ("ab"+"c" vs "a"+"bc").
_ROLE_SEP, _MSG_SEP, _LABEL_SEP = "\x1f", "\x1e", "\x1d"


def normalize_text(expr: pl.Expr) -> pl.Expr:
    """Unicode NFKC, whitespace runs collapsed to one space, ends stripped (case is kept).

    The same result as `.str.normalize("NFKC").str.replace_all(r"\\s+", " ").str.strip_chars()`,
    about 5x faster on typical text: NFKC leaves ASCII unchanged, so only rows with a
    non-ASCII character are normalized (string kernels skip nulls); and only whitespace
    runs that are not already one plain space are matched and replaced.
    """
    non_ascii = expr.str.len_bytes() != expr.str.len_chars()
    text = pl.coalesce(pl.when(non_ascii).then(expr).str.normalize("NFKC"), expr)
    return text.str.replace_all(r"\s{2,}|[\s&&[^ ]]", " ").str.strip_chars()


def canonical_content(messages: pl.Expr, label: pl.Expr) -> pl.Expr:
    """One string per row that identifies its content: what the id hashes."""
    turns = messages.list.eval(
        pl.element().struct.field("role")
        + pl.lit(_ROLE_SEP)
        + normalize_text(pl.element().struct.field("content"))
    ).list.join(_MSG_SEP)
    return turns + pl.lit(_LABEL_SEP) + normalize_text(label.fill_null(""))


def hash_strings(values: pl.Series) -> pl.Series:
    """A stable 128-bit hex digest (blake2b) per string, null for null (polars' own hash is not stable across versions)."""
    blake2b = hashlib.blake2b
    # Binary values come out as bytes: no per-row str object to build and encode again.
    raw = values.cast(pl.Binary).to_list()
    if values.null_count():  # no content (a row without messages): no id
        digests = [None if v is None else blake2b(v, digest_size=16).hexdigest() for v in raw]
    else:
        digests = [blake2b(v, digest_size=16).hexdigest() for v in raw]
    return pl.Series(values.name, digests, dtype=pl.String)


# Rows per slice when ids are computed in slices (see `with_ids`).
_ID_SLICE = 65_536


def with_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Set `id` from the normalized messages and label.

    Large tables go in slices: worker threads build the canonical strings of the
    next slices in polars (which releases the GIL) while this thread hashes the
    current one, so normalizing and hashing overlap on every core; and only a few
    slices' canonical strings, and their Python copies, are alive at a time.
    """
    if df.height <= _ID_SLICE:
        return df.with_columns(hash_strings(canonical(df)))
    workers = max(1, min(pl.thread_pool_size(), 4))
    starts = iter(range(0, df.height, _ID_SLICE))
    ids = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(canonical, df.slice(start, _ID_SLICE)) for start in islice(starts, workers))
        while pending:
            current = pending.popleft().result()
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(canonical, df.slice(start, _ID_SLICE)))
            ids.append(hash_strings(current))
            del current
    return df.with_columns(pl.concat(ids, rechunk=True))


def canonical(df: pl.DataFrame) -> pl.Series:
    """The canonical content of each row (`canonical_content` of `messages` and `label`), named `id`: what the id hashes."""
    return df.select(canonical_content(pl.col("messages"), pl.col("label")).alias("id")).to_series()


def is_record_set(df: pl.DataFrame) -> bool:
    """True when `df` already has every core column with its core type (a smallset dataset)."""
    return all(df.schema.get(name) == dtype for name, dtype in CORE_SCHEMA.items())


def order_columns(df: pl.DataFrame) -> pl.DataFrame:
    """Core columns first, in schema order, then stage columns as they came."""
    rest = [c for c in df.columns if c not in CORE_SCHEMA]
    return df.select([*CORE_COLUMNS, *rest])


def problems(df: pl.DataFrame) -> pl.Series:
    """Per row, why it is not a valid record (null when it is).

    Checked: messages present and non-empty, every turn has a known role and a
    content, and at least one assistant turn (the thing a student learns to say).
    """
    element_role = pl.element().struct.field("role")
    element_content = pl.element().struct.field("content")
    msgs = pl.col("messages")
    bad_role = msgs.list.eval(element_role.is_null() | ~element_role.is_in(ROLES)).list.any()
    null_content = msgs.list.eval(element_content.is_null()).list.any()
    has_assistant = msgs.list.eval(element_role == "assistant").list.any()
    reason = (
        pl.when(msgs.is_null() | (msgs.list.len() == 0))
        .then(pl.lit("no messages"))
        .when(bad_role)
        .then(pl.lit("a message has a missing or unknown role (expected system, user or assistant)"))
        .when(null_content)
        .then(pl.lit("a message has no content"))
        .when(~has_assistant)
        .then(pl.lit("no assistant turn"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return df.select(reason.alias("problem")).to_series()


def empty() -> pl.DataFrame:
    """A record set with no rows."""
    return pl.DataFrame(schema=CORE_SCHEMA)

"""How a smallset row looks in Argilla, and back: names, ids, fields, metadata, suggestions.

One row becomes one Argilla record:

* its id is `<key>:<row id>`, where the key names the dataset it came from (the
  file's stem unless `--key` says otherwise): pushing the same file again finds
  the rows already there, and two datasets pushed into one Argilla dataset never
  overwrite each other's records;
* its layout follows the row's task (`row_layouts`): a classification row (a
  label, and no reply or the label as its reply) shows its `text` and one label
  question; any other row is a chat row: `prompt` (a chat of every turn but the
  last assistant one) and `response` (that assistant turn). Argilla fixes fields
  and questions per dataset, so data with both kinds goes to one dataset per
  layout (`dataset_names`);
* questions (see `settings.py`) are pre-filled with suggestions: the label
  question with the row's own label (scored by check-labels' `label_quality`
  when present), and for chat the rating from the judge's score, accept/reject
  from the same score, the label from the judge's (or the row's own), the
  corrected response from the response itself, so that a correction is an
  edit in place;
* metadata for filtering: dataset key, source, origin (synthetic or real),
  label, the judge's scores and any other `*_score` column, duplicate-cluster
  size, check-labels' `label_issue`, `label_suggested` and `label_quality`.

Scores are read from columns (`curate score --judge` adds them) or, when the
dataset came through a format that folded them away, from the same keys in
`meta`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.review.routing import is_synthetic

# Layouts, and field, question and vector names in the Argilla dataset.
CLASSIFICATION, CHAT = "classification", "chat"
LAYOUTS = (CLASSIFICATION, CHAT)
TEXT = "text"  # the classification layout's one field
PROMPT, RESPONSE, LABEL = "prompt", "response", "given_label"  # "label" names the metadata property
DECISION, RATING, CORRECTED_RESPONSE, CORRECTED_LABEL = "decision", "rating", "corrected_response", "corrected_label"
VECTOR = "embedding"
ACCEPT, REJECT = "accept", "reject"
RATINGS = (1, 2, 3, 4, 5)

JUDGE_AGENT = "smallset-judge"
ORIGINAL_AGENT = "original"
ACCEPT_FROM_SCORE = 3.0  # judge_score at or above this is suggested as "accept"

# Keys that `curate score --judge` and `curate dedup` write, looked up in `meta` when no column holds them.
SCORE_KEYS = ("judge_score", "judge_label", "judge_agrees", "dedup_cluster_size")
# What `curate check-labels` adds: shown as metadata, the quality scores the label suggestion.
CHECK_LABELS_COLUMNS = ("label_issue", "label_suggested", "label_quality")
CHECK_LABELS_AGENT = "check-labels"
CLUSTER_SIZE = "dedup_cluster_size"
MAX_MESSAGE_CHARS = 20_000  # Argilla's limit per chat message (display only: pull reads the dataset file)


def default_key(path: str | Path) -> str:
    """A dataset's key: its file (or folder) name without the data suffixes."""
    name = Path(path).name
    for suffix in (".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def external_id(key: str, record_id: str) -> str:
    return f"{key}:{record_id}"


def row_layouts(df: pl.DataFrame) -> pl.Series:
    """Each row's layout: classification (a label that is the reply, or no reply) or chat."""
    from curate.text import classification_row

    if df.height == 0:
        return pl.Series("layout", [], dtype=pl.String)
    layout = pl.when(classification_row()).then(pl.lit(CLASSIFICATION)).otherwise(pl.lit(CHAT))
    return df.select(layout.alias("layout"))["layout"]


def dataset_names(name: str, layouts: set[str] | list[str]) -> dict[str, str]:
    """The Argilla dataset of each layout: `name` itself for one layout, `name-classification` and `name-chat`
    when the data has both (a dataset has one set of fields and questions)."""
    present = [layout for layout in LAYOUTS if layout in set(layouts)]
    if len(present) <= 1:
        return {layout: name for layout in present}
    return {layout: f"{name}-{layout}" for layout in present}


def classification_text(messages: list[dict]) -> str:
    """What a classification row's label is about: its user turns (every turn but the replies when none is a user's)."""
    turns = [m for m in messages if m.get("role") == "user"] or [m for m in messages if m.get("role") != "assistant"]
    return "\n\n".join(str(m.get("content") or "") for m in turns)


def last_assistant(messages: list[dict]) -> int | None:
    """Index of the last assistant turn (the response reviewers judge), if any."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return i
    return None


def split_turns(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(every turn but the last assistant one, that turn's content)."""
    index = last_assistant(messages)
    if index is None:
        return list(messages), None
    return messages[:index] + messages[index + 1 :], messages[index].get("content")


def _display(text: Any) -> str:
    text = "" if text is None else str(text)
    if not text.strip():
        return "(empty)"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


# --------------------------------------------------------------------------- scores and metadata


def with_meta_scores(df: pl.DataFrame) -> pl.DataFrame:
    """Add the judge's and dedup's columns from `meta` where the dataset lacks them as columns."""
    if "meta" not in df.columns:
        return df
    lifted = []
    for key in SCORE_KEYS:
        if key in df.columns:
            continue
        raw = pl.col("meta").fill_null("{}").str.json_path_match(f"$.{key}")
        if key == "judge_label":
            lifted.append(raw.alias(key))
        elif key == "judge_agrees":
            lifted.append(raw.str.to_lowercase().replace_strict({"true": True, "false": False}, default=None,
                                                                 return_dtype=pl.Boolean).alias(key))
        elif key == CLUSTER_SIZE:
            lifted.append(raw.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False).alias(key))
        else:
            lifted.append(raw.cast(pl.Float64, strict=False).alias(key))
    if not lifted:
        return df
    extra = df.select(lifted)
    keep = [s for s in extra.iter_columns() if s.null_count() < df.height]
    return df.with_columns(keep) if keep else df


@dataclass(frozen=True)
class MetadataColumn:
    """A column shown as Argilla metadata: its name and Argilla type (terms, integer, float)."""

    name: str
    kind: str


def metadata_columns(df: pl.DataFrame) -> list[MetadataColumn]:
    """Score-like columns worth filtering on, besides the fixed ones (dataset, source, origin, label)."""
    found = []
    for name, dtype in df.schema.items():
        if name in ("id", "messages", "label", "source", "meta"):
            continue
        scorelike = (name.startswith("judge_") or name.endswith("_score")
                     or name in ("score", CLUSTER_SIZE, *CHECK_LABELS_COLUMNS))
        if not scorelike or name != name.lower() or not name.replace("_", "").isalnum():
            continue
        if dtype == pl.Boolean:
            found.append(MetadataColumn(name, "terms"))
        elif dtype.is_integer():
            found.append(MetadataColumn(name, "integer"))
        elif dtype.is_float():
            found.append(MetadataColumn(name, "float"))
        elif name in ("judge_label", "label_suggested"):
            found.append(MetadataColumn(name, "terms"))
    return found


def labels_of(df: pl.DataFrame) -> list[str]:
    """The classes of a classification dataset (its labels and the judge's); empty when it has none."""
    values = set(df["label"].drop_nulls().to_list()) if "label" in df.columns else set()
    if not values:
        return []
    for column in ("judge_label", "label_suggested"):
        if column in df.columns and df.schema[column] == pl.String:
            values |= set(df[column].drop_nulls().to_list())
    return sorted(v for v in values if v.strip())


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _metadata_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "terms":
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    number = _number(value)
    if number is None:
        return None
    return int(number) if kind == "integer" else number


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordPlan:
    """What every pushed record carries: the settings-dependent parts of the mapping."""

    key: str
    layout: str  # CLASSIFICATION or CHAT
    labels: tuple[str, ...]
    metadata: tuple[MetadataColumn, ...]
    fields: frozenset[str]  # fields the Argilla dataset has
    questions: frozenset[str]  # questions it has (for suggestions)
    metadata_names: frozenset[str]  # metadata properties it has


def prepare(df: pl.DataFrame) -> pl.DataFrame:
    """Columns the mapping needs: the origin flag (synthetic or real)."""
    return df.with_columns(is_synthetic().alias("_synthetic"))


def record_payload(row: dict, plan: RecordPlan) -> dict:
    """One row as Argilla record parts: id, fields, metadata, suggestions (name -> (value, agent, score))."""
    messages = row.get("messages") or []
    prompt, response = split_turns(messages)
    fields: dict[str, Any] = {}
    if plan.layout == CLASSIFICATION:
        if TEXT in plan.fields:
            fields[TEXT] = _display(classification_text(messages))
    else:
        if PROMPT in plan.fields and prompt:
            fields[PROMPT] = [{"role": m.get("role") or "user", "content": _display(m.get("content"))}
                              for m in prompt[-500:]]
        if RESPONSE in plan.fields:
            fields[RESPONSE] = _display(response)
        if LABEL in plan.fields and row.get("label") is not None:
            fields[LABEL] = str(row["label"])

    metadata: dict[str, Any] = {
        "dataset": plan.key,
        "source": row.get("source"),
        "origin": "synthetic" if row.get("_synthetic") else "real",
    }
    if plan.labels and row.get("label") is not None:
        metadata["label"] = str(row["label"])
    for column in plan.metadata:
        metadata[column.name] = _metadata_value(row.get(column.name), column.kind)
    metadata = {k: v for k, v in metadata.items() if v is not None and k in plan.metadata_names}

    suggestions: dict[str, tuple[Any, str, float | None]] = {}
    score = _number(row.get("judge_score"))
    if score is not None:
        suggestions[RATING] = (min(max(int(round(score)), RATINGS[0]), RATINGS[-1]), JUDGE_AGENT, None)
        suggestions[DECISION] = (ACCEPT if score >= ACCEPT_FROM_SCORE else REJECT, JUDGE_AGENT, None)
    if plan.layout == CLASSIFICATION:
        # The row's own label, preselected: submitting it unchanged keeps the label. check-labels' doubt is
        # its score (the predicted probability of that label) and the label_issue / label_suggested metadata.
        if row.get("label") in plan.labels:
            quality = _number(row.get("label_quality"))
            agent = CHECK_LABELS_AGENT if quality is not None else ORIGINAL_AGENT
            score = min(max(quality, 0.0), 1.0) if quality is not None else None
            suggestions[CORRECTED_LABEL] = (row["label"], agent, score)
    else:
        if plan.labels:
            judge_label = row.get("judge_label")
            if isinstance(judge_label, str) and judge_label in plan.labels:
                suggestions[CORRECTED_LABEL] = (judge_label, JUDGE_AGENT, None)
            elif row.get("label") in plan.labels:
                suggestions[CORRECTED_LABEL] = (row["label"], ORIGINAL_AGENT, None)
        if response is not None and response.strip():
            suggestions[CORRECTED_RESPONSE] = (response, ORIGINAL_AGENT, None)
    suggestions = {k: v for k, v in suggestions.items() if k in plan.questions}
    return {"id": external_id(plan.key, row["id"]), "fields": fields, "metadata": metadata, "suggestions": suggestions}


def meta_dict(text: str | None) -> dict:
    """A row's `meta` as a dict (an empty one for null or non-object JSON)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"_meta": text}
    return value if isinstance(value, dict) else {"_meta": value}

"""`curate review pull`: bring every decision back into the dataset.

Every row of DATASET comes back, none is dropped: each gets `review_outcome`
(accepted, rejected, corrected or pending), `review_votes`, `review_rating` and
`review_conflict`, and `meta.review` keeps the votes (who answered what), the
rule that decided, and for a corrected row its original response, label and id.
A correction replaces the last assistant turn or the label (and, for text+label
data, the assistant turn that holds the label); the row's id is recomputed from
the new content, as everywhere in smallset.

Rows are looked up in the dataset of their layout (see `mapping.dataset_names`:
one dataset for data of one task, `NAME-classification` and `NAME-chat` for
data with both; a mixed dataset pushed into `NAME` alone is found there too).
In the classification layout the answer is the label (a changed one is a
correction, Discard a rejection); in the chat layout the decision, rating and
corrected response (and label, when asked).

Questions are found by the names push gives them. When the Argilla dataset was
changed by hand (or made by hand), a missing question is looked for by its
type (a label question with accept/reject-like labels, a rating, a text); what
still cannot be mapped is reported, and its answers are kept in `meta.review`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.atomic import sidecar, write_text
from curate.manifest import Manifest
from curate.readers import read_records
from curate.records import with_ids
from curate.review.agreement import Agreement, agreement
from curate.review.client import Connection, ReviewError, argilla_errors
from curate.review.decisions import (
    CORRECTED,
    PENDING,
    Vote,
    decide,
    decision_value,
    outcome_counts,
    same_text,
)
from curate.review.mapping import (
    CLASSIFICATION,
    CORRECTED_LABEL,
    CORRECTED_RESPONSE,
    DECISION,
    RATING,
    dataset_names,
    default_key,
    external_id,
    last_assistant,
    meta_dict,
    row_layouts,
)
from curate.review.push import iter_records
from curate.review.server import DEFAULT_ARGILLA_WORKSPACE
from curate.review.settings import layout_of
from curate.writers import write_records

if TYPE_CHECKING:
    import argilla as rg

DECIDING = ("submitted", "discarded")  # drafts are not decisions


@dataclass
class PullOptions:
    name: str | None = None
    key: str | None = None
    argilla_workspace: str = DEFAULT_ARGILLA_WORKSPACE
    min_votes: int = 1
    on_tie: str = "reject"


@dataclass
class QuestionMap:
    """Which Argilla question plays which part (None: the dataset has none)."""

    decision: str | None = None
    rating: str | None = None
    response: str | None = None
    label: str | None = None
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def map_questions(settings: "rg.Settings", labels: set[str] | None = None, expect_decision: bool = True) -> QuestionMap:
    """Map questions by name, then (for a dataset changed or made by hand) by type.

    A label question found by type is read as the corrected label only when it
    offers one of the dataset's `labels`: a question about something else (tone,
    language) must not overwrite the rows' labels. `expect_decision` False (the
    classification layout): no accept/reject question is no news.
    """
    import argilla as rg

    questions = list(settings.questions)
    by_name = {q.name: q for q in questions}
    found = QuestionMap(
        decision=DECISION if DECISION in by_name else None,
        rating=RATING if RATING in by_name else None,
        response=CORRECTED_RESPONSE if CORRECTED_RESPONSE in by_name else None,
        label=CORRECTED_LABEL if CORRECTED_LABEL in by_name else None,
    )

    def free(kind) -> list:
        taken = {found.decision, found.rating, found.response, found.label}
        return [q for q in questions if isinstance(q, kind) and q.name not in taken]

    if found.decision is None:
        for question in free(rg.LabelQuestion):
            values = {decision_value(label) for label in question.labels}
            if values == {"accept", "reject"}:
                found.decision = question.name
                found.notes.append(f"the question {question.name!r} is read as the accept/reject decision")
                break
        else:
            if expect_decision:
                found.notes.append("no accept/reject question: every submitted response counts as accepted")
    if found.rating is None:
        candidates = free(rg.RatingQuestion)
        if candidates:
            found.rating = candidates[0].name
            found.notes.append(f"the question {found.rating!r} is read as the rating")
    if found.response is None:
        candidates = free(rg.TextQuestion)
        if candidates:
            found.response = candidates[0].name
            found.notes.append(f"the question {found.response!r} is read as the corrected response")
    if found.label is None:
        candidates = [q for q in free(rg.LabelQuestion) if set(q.labels) & (labels or set())]
        if candidates:
            found.label = candidates[0].name
            found.notes.append(f"the question {found.label!r} is read as the corrected label")
    taken = {found.decision, found.rating, found.response, found.label}
    found.unmapped = [q.name for q in questions if q.name not in taken]
    for name in found.unmapped:
        found.notes.append(f"the question {name!r} has no meaning for smallset: its answers are kept in meta.review")
    return found


def _votes(record, questions: QuestionMap, users: dict[str, str], notes: Counter) -> tuple[list[Vote], int]:
    """A record's decisions (submitted and discarded responses) and its number of drafts."""
    votes, drafts = [], 0
    for response in record.responses or []:
        status = getattr(response.status, "value", response.status)
        if status not in DECIDING:
            drafts += 1
            continue
        values = {name: (answer or {}).get("value") for name, answer in (response.values or {}).items()}
        decision = None
        if questions.decision and values.get(questions.decision) is not None:
            decision = decision_value(values[questions.decision])
            if decision is None:
                notes[f"decision value {values[questions.decision]!r} is neither accept nor reject: counted as accept"] += 1
        rating = values.get(questions.rating) if questions.rating else None
        votes.append(
            Vote(
                user=users.get(str(response.user_id), str(response.user_id)),
                status=status,
                decision=decision,
                rating=float(rating) if isinstance(rating, (int, float)) and not isinstance(rating, bool) else None,
                response=values.get(questions.response) if questions.response else None,
                label=values.get(questions.label) if questions.label else None,
                other={name: values[name] for name in questions.unmapped if values.get(name) is not None},
            )
        )
    votes.sort(key=lambda vote: vote.user)
    return votes, drafts


def fetch_records(conn: Connection, dataset: "rg.Dataset") -> dict[str, Any]:
    """Every record of the Argilla dataset with its responses, by external id."""
    return {str(record.external_id): record for record in iter_records(conn, dataset, with_responses=True)}


@dataclass
class Source:
    """One Argilla dataset that pull reads: its name, question map and records."""

    name: str
    questions: QuestionMap
    records: dict[str, Any]


def _sources(conn: Connection, df: pl.DataFrame, name: str, workspace: str) -> dict[str, Source]:
    """The dataset of each layout in `df` (a layout whose dataset does not exist is left out)."""
    labels = set(df["label"].drop_nulls().to_list())
    found: dict[str, Source] = {}
    read: dict[str, Source] = {}  # by dataset name: a mixed dataset pushed into NAME alone serves both layouts
    for layout, wanted in dataset_names(name, set(row_layouts(df).to_list())).items():
        for candidate in dict.fromkeys((wanted, name)):
            if candidate not in read:
                dataset = conn.dataset(candidate, workspace)
                if dataset is None:
                    continue
                expect_decision = layout_of(dataset.settings) != CLASSIFICATION
                read[candidate] = Source(candidate, map_questions(dataset.settings, labels, expect_decision),
                                         fetch_records(conn, dataset))
            found[layout] = read[candidate]
            break
    return found


def _user_names(conn: Connection) -> dict[str, str]:
    try:
        return {str(user.id): user.username for user in conn.client.users}
    except Exception:  # an annotator's key may not list users: fall back to ids
        return {}


@dataclass
class PullReport:
    dataset: str
    workspace: str
    url: str
    key: str
    rows: int
    outcomes: dict[str, int]
    pending: dict[str, int]
    annotators: dict[str, dict[str, int]]
    agreement: list[Agreement]
    conflicts: dict[str, int]
    unmatched_records: int
    rule: str
    notes: list[str]
    output: str = ""
    report_file: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "agreement"}
        out["agreement"] = [a.to_dict() for a in self.agreement]
        return out


def _corrected_messages(messages: list[dict], old_label: str | None, response: str | None, label: str | None,
                        response_changed: bool) -> list[dict]:
    messages = [dict(m) for m in messages]
    index = last_assistant(messages)
    if index is None:
        return messages
    if response_changed:
        messages[index]["content"] = response
    elif label != old_label and old_label is not None and same_text(messages[index].get("content"), old_label):
        messages[index]["content"] = label  # text+label data: the assistant turn is the label
    return messages


def pull(path: Path, output: Path, conn: Connection, options: PullOptions) -> PullReport:
    """Write DATASET with every row's review outcome to OUTPUT (plus OUTPUT.review.json and a manifest)."""
    key = options.key or default_key(path)
    name = options.name or key
    manifest = Manifest("curate review pull", parameters={
        "url": conn.url, "workspace": options.argilla_workspace, "dataset": name, "key": key,
        "min_votes": options.min_votes, "on_tie": options.on_tie,
    })
    df = read_records(path).records
    manifest.add_input(path, rows=df.height)

    with argilla_errors(conn.url):
        sources = _sources(conn, df, name, options.argilla_workspace)
        if not sources:
            wanted = [*dataset_names(name, set(row_layouts(df))).values(), name]
            names = " or ".join(repr(n) for n in dict.fromkeys(wanted))
            raise ReviewError(
                f"Argilla at {conn.url} has no dataset {names} in the workspace {options.argilla_workspace!r}; "
                "push it first (or pass --name / --argilla-workspace)"
            )
        users = _user_names(conn)
    records = {ext: (record, source) for source in {id(s): s for s in sources.values()}.values()
               for ext, record in source.records.items()}

    notes: Counter = Counter()
    rows_out: dict[str, list] = defaultdict(list)
    pending = Counter()
    annotators: dict[str, Counter] = defaultdict(Counter)
    per_question: dict[str, list[dict]] = defaultdict(list)
    conflicts = Counter()
    matched: set[str] = set()
    seen_records: set[str] = set()
    changed_rows: list[int] = []

    for i, row in enumerate(df.iter_rows(named=True)):
        messages = row["messages"] or []
        index = last_assistant(messages)
        original_response = messages[index]["content"] if index is not None else None
        original_label = row.get("label")
        meta = meta_dict(row.get("meta"))
        ext = external_id(key, row["id"])
        record, source = records.get(ext, (None, None))
        if record is None:
            pending["not in Argilla"] += 1
            meta["review"] = {"outcome": PENDING, "reason": "not in Argilla (not pushed, or deleted there)"}
            for column, value in (("outcome", PENDING), ("votes", 0), ("rating", None), ("conflict", False)):
                rows_out[column].append(value)
            rows_out["messages"].append(messages)
            rows_out["label"].append(original_label)
            rows_out["meta"].append(json.dumps(meta, ensure_ascii=False))
            continue
        matched.add(ext)
        questions = source.questions
        votes, drafts = _votes(record, questions, users, notes)
        first_time = ext not in seen_records  # a repeated row id: count its record once
        seen_records.add(ext)
        if first_time:
            for response in record.responses or []:
                status = getattr(response.status, "value", response.status)
                annotators[users.get(str(response.user_id), str(response.user_id))][status] += 1
        result = decide(votes, original_response, original_label, min_votes=options.min_votes, on_tie=options.on_tie)
        if first_time and len(votes) >= 2:
            per_question["decision"].append({v.user: "reject" if not v.keeps else "accept" for v in votes})
            per_question["outcome"].append({v.user: v.outcome(original_response, original_label) for v in votes})
            if questions.rating:
                per_question["rating"].append({v.user: v.rating for v in votes})
            submitted = [v for v in votes if v.status == "submitted"]
            if questions.response:
                per_question["corrected_response"].append(
                    {v.user: " ".join(str(v.final_response(original_response) or "").split()) for v in submitted})
            if questions.label and original_label is not None:
                per_question["corrected_label"].append({v.user: v.final_label(original_label) for v in submitted})
            if result.conflict:
                conflicts["records"] += 1
                conflicts["ties" if result.rule == "tie" else "resolved_by_majority"] += 1
        if result.outcome == PENDING:
            pending["tie (left pending)" if result.rule == "tie" else "awaiting a decision"] += 1
        review: dict[str, Any] = {"outcome": result.outcome, "rule": result.rule, "dataset": source.name, "record": ext,
                                  "votes": [v.to_dict() for v in votes]}
        if drafts:
            review["drafts"] = drafts
        new_messages, new_label = messages, original_label
        if result.outcome == CORRECTED:
            response_changed = not same_text(result.response, original_response)
            new_messages = _corrected_messages(messages, original_label, result.response, result.label,
                                               response_changed)
            new_label = result.label
            review["original"] = {"id": row["id"], "response": original_response, "label": original_label}
            changed_rows.append(i)
        meta["review"] = review
        rows_out["outcome"].append(result.outcome)
        rows_out["votes"].append(result.votes)
        rows_out["rating"].append(result.rating)
        rows_out["conflict"].append(result.conflict)
        rows_out["messages"].append(new_messages)
        rows_out["label"].append(new_label)
        rows_out["meta"].append(json.dumps(meta, ensure_ascii=False))

    out = df.with_columns(
        pl.Series("messages", rows_out["messages"], dtype=df.schema["messages"]),
        pl.Series("label", rows_out["label"], dtype=pl.String),
        pl.Series("meta", rows_out["meta"], dtype=pl.String),
        pl.Series("review_outcome", rows_out["outcome"], dtype=pl.String),
        pl.Series("review_votes", rows_out["votes"], dtype=pl.Int64),
        pl.Series("review_rating", rows_out["rating"], dtype=pl.Float64),
        pl.Series("review_conflict", rows_out["conflict"], dtype=pl.Boolean),
    )
    if changed_rows:
        fresh = with_ids(out[changed_rows])["id"]
        ids = out["id"].to_list()
        for i, new_id in zip(changed_rows, fresh.to_list()):
            ids[i] = new_id
        out = out.with_columns(pl.Series("id", ids, dtype=pl.String))
    write_records(out, output)

    levels = {"rating": "ordinal"}
    results = [
        agreement(q, per_question.get(q, []), levels.get(q, "nominal"), domain=[1, 2, 3, 4, 5] if q == "rating" else None)
        for q in ("decision", "rating", "corrected_response", "corrected_label", "outcome")
        if q in per_question or q in ("decision", "outcome")
    ]
    unmatched = sum(1 for ext in records if ext.startswith(f"{key}:") and ext not in matched)
    dataset_list = ", ".join(dict.fromkeys(source.name for source in sources.values()))
    question_notes = dict.fromkeys(note for source in sources.values() for note in source.questions.notes)
    all_notes = list(question_notes) + [f"{text} ({n} answers)" for text, n in notes.items()]
    if unmatched:
        all_notes.append(f"{unmatched} Argilla records of key {key!r} match no row of {path} (its rows changed?)")
    other_keys = []
    if not matched:  # the rows may be there under another key: then the key is the likely mistake, so name it
        row_ids = set(df["id"].to_list())
        other_keys = sorted({k for k, _, rid in (ext.partition(":") for ext in records) if k != key and rid in row_ids})
    if other_keys:
        all_notes.append(f"no row of {path} is in {dataset_list!r} under the key {key!r}, but some are under "
                         f"{', '.join(map(repr, other_keys))}: pass the --key they were pushed with")
    rule = ("majority of the decisions (submitted and discarded responses); a tie is "
            + ("left pending" if options.on_tie == "pending" else "rejected")
            + f"; at least {options.min_votes} decision(s) per row")
    report = PullReport(
        dataset=dataset_list, workspace=options.argilla_workspace, url=conn.url, key=key, rows=out.height,
        outcomes=outcome_counts(rows_out["outcome"]), pending=dict(pending),
        annotators={user: dict(counts) for user, counts in sorted(annotators.items())},
        agreement=results, conflicts={k: conflicts.get(k, 0) for k in ("records", "resolved_by_majority", "ties")},
        unmatched_records=unmatched, rule=rule, notes=all_notes, output=str(output),
        report_file=str(sidecar(output, "review.json")),
    )
    write_text(report.report_file, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    manifest.add_output(output, rows=out.height)
    manifest.add_output(report.report_file)
    manifest.counts = {"in": df.height, "out": out.height, **report.outcomes}
    manifest.write(output)
    return report

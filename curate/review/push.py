"""`curate review push`: send the rows that need a person to an Argilla dataset.

Idempotent by construction: every Argilla record id derives from the dataset
key and the row id (`mapping.external_id`). Push first lists the ids the
Argilla dataset already holds and sends only the others: records built with the
SDK, in batches of 500 to Argilla's bulk upsert endpoint, two in flight. A push
that stopped halfway (Ctrl-C, a crash, a network failure) is finished by running
it again: the batches that arrived are skipped, and a batch that arrived without
its answer is upserted by id, never added twice.

Each row goes to the dataset of its layout (classification or chat, see
`mapping.py`): data of one task to one dataset, data with both to one dataset
per layout, `NAME-classification` and `NAME-chat`, as Argilla datasets have one
set of fields and questions each.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from curate.readers import read_records
from curate.review.client import Connection, ReviewError, argilla_errors
from curate.review.mapping import (
    CLASSIFICATION,
    CORRECTED_LABEL,
    VECTOR,
    RecordPlan,
    dataset_names,
    default_key,
    external_id,
    labels_of,
    metadata_columns,
    prepare,
    record_payload,
    row_layouts,
    with_meta_scores,
)
from curate.review.routing import Route, route
from curate.review.server import DEFAULT_ARGILLA_WORKSPACE
from curate.review.settings import Reconciled, TaskShape, build_settings, layout_of, reconcile

if TYPE_CHECKING:
    import argilla as rg

MAX_BATCH = 500  # Argilla's limit per bulk upsert
IN_FLIGHT = 2  # batches sent and not yet answered: the server stores one while it reads the next
SEND_ATTEMPTS = 4  # a batch that lost a race with a concurrent push of the same rows is sent again
LIST_PAGE = 1000  # Argilla's limit per records page


@dataclass
class PushOptions:
    name: str | None = None  # the Argilla dataset (default: the key)
    key: str | None = None  # the dataset key in record ids (default: the file's stem)
    argilla_workspace: str = DEFAULT_ARGILLA_WORKSPACE
    route: Route = field(default_factory=Route)
    overlap: int | None = None
    vectors: bool = True
    embedder: str | None = None
    batch_size: int = MAX_BATCH
    ask_decision: bool = False  # classification: ask accept/reject besides the label


@dataclass
class PushReport:
    dataset: str
    workspace: str
    url: str
    dataset_url: str
    created: bool
    layout: str
    rows: int
    routed: int
    already: int
    pushed: int
    duplicate_ids: int
    vectors: bool
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def iter_records(conn: Connection, dataset: "rg.Dataset", with_responses: bool = False) -> Iterator:
    """Every record of the Argilla dataset (SDK record models), in pages of 1000."""
    offset = 0
    while True:
        page = conn.client.api.records.list(
            dataset_id=dataset.id, limit=LIST_PAGE, offset=offset, with_responses=with_responses,
            with_suggestions=False,
        )
        yield from page
        if len(page) < LIST_PAGE:
            return
        offset += len(page)


def existing_ids(conn: Connection, dataset: "rg.Dataset") -> set[str]:
    """External ids of every record in the Argilla dataset."""
    return {str(record.external_id) for record in iter_records(conn, dataset) if record.external_id is not None}


def _embed(df: pl.DataFrame, embedder: str | None, fields: tuple[str, ...]) -> list[list[float]]:
    from curate.embeddings import embed
    from curate.text import field_text

    texts = df.select(field_text(fields).alias("t"))["t"].to_list()
    return embed(texts, embedder, progress=False).tolist()


def _create(conn: Connection, dataset: "rg.Dataset") -> "rg.Dataset | None":
    """Create and publish the dataset; a failed step removes what it left (a draft would block the next push).

    When another push created it first (two pushes at once), nothing is removed: that push's dataset
    is returned once it is published, and this push adds its records to it. None: created here.
    The server says so with a 409 when it saw the other dataset, or, when both inserts raced past
    its name check, with a 500 from the database's unique constraint: either way this push's POST
    made nothing (the SDK sets the id only when it succeeds), and the name is taken.
    """
    try:
        dataset.create()
        return None
    except BaseException as exc:
        conflict = getattr(exc, "status_code", None) == 409 or "ConflictError" in {c.__name__ for c in type(exc).__mro__}
        if conflict or (dataset.id is None and isinstance(exc, Exception) and _exists(conn, dataset)):
            return _published(conn, dataset.name, dataset.workspace.name)
        if dataset.id is None:  # nothing was made here: whatever has the name is not this push's to remove
            raise
        with contextlib.suppress(Exception):
            left = conn.dataset(dataset.name, dataset.workspace.name)
            if left is not None:
                left.delete()
        raise


def _exists(conn: Connection, dataset: "rg.Dataset") -> bool:
    """Whether a dataset of that name is there now (asked again once if the server dropped the connection,
    as it does after the error a lost race gives)."""
    import httpx

    try:
        return conn.dataset(dataset.name, dataset.workspace.name) is not None
    except httpx.TransportError:
        return conn.dataset(dataset.name, dataset.workspace.name) is not None


def _published(conn: Connection, name: str, workspace: str, timeout_s: float = 60.0) -> "rg.Dataset":
    """The dataset another push is creating, once it takes records (published, not a draft)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = conn.dataset(name, workspace)
        if found is not None:
            status = conn.client.api.datasets.http_client.get(f"/api/v1/datasets/{found.id}").json().get("status")
            if status == "ready":
                return found
        if time.monotonic() > deadline:
            raise ReviewError(f"dataset {workspace}/{name} is still a draft after {timeout_s:.0f} s (a push that was "
                              "creating it stopped?): delete it in Argilla's UI, then push again")
        time.sleep(0.25)


def _sent(future: Future, advance: Callable[[int], None] | None) -> int:
    """Wait for a batch to be stored; tell the progress bar."""
    count = future.result()
    if advance is not None:
        advance(count)
    return count


def push(
    path: Path,
    conn: Connection,
    options: PushOptions,
    *,
    progress: Callable[[str], None] = print,
    bar: Callable[[int], Callable[[int], None]] | None = None,
) -> list[PushReport]:
    """Push the routed rows of `path` that the Argilla datasets do not hold yet: one report per dataset.

    Rows go to the dataset of their layout (`mapping.dataset_names`): one dataset for data of one task,
    `NAME-classification` and `NAME-chat` for data with both. `bar(total)` may return a callback that
    is told how many records each sent batch held.
    """
    key = options.key or default_key(path)
    name = options.name or key
    df = with_meta_scores(read_records(path).records)
    routed = route(df, options.route)
    layouts, routed_layouts = row_layouts(df), row_layouts(routed)
    reports = []
    with argilla_errors(conn.url):
        workspace = conn.workspace(options.argilla_workspace, create=True)
        for layout, dataset_name in dataset_names(name, set(layouts.to_list())).items():
            report = _push_layout(
                conn, workspace, dataset_name, key, layout, df.filter(layouts == layout),
                routed.filter(routed_layouts == layout), options, progress=progress, bar=bar,
            )
            if report is not None:
                reports.append(report)
    if not reports:
        raise ReviewError(f"no rows of {path} to push (routing {options.route.describe()} selected none)")
    return reports


def _push_layout(conn: Connection, workspace, name: str, key: str, layout: str, df: pl.DataFrame,
                 routed: pl.DataFrame, options: PushOptions, *, progress: Callable[[str], None],
                 bar: Callable[[int], Callable[[int], None]] | None) -> PushReport | None:
    """Push one layout's routed rows into its dataset; None when it has none and the dataset does not exist."""
    import argilla as rg

    unique = routed.unique(subset="id", keep="first", maintain_order=True)
    duplicates = routed.height - unique.height
    dataset = conn.dataset(name, workspace.name)
    if dataset is not None:  # another push may be creating it right now: wait until it is published
        dataset = _published(conn, name, workspace.name)
    elif unique.height == 0:
        return None
    already = existing_ids(conn, dataset) if dataset is not None else set()
    ids = [external_id(key, rid) for rid in unique["id"].to_list()]
    new = unique.filter(pl.Series([i not in already for i in ids], dtype=pl.Boolean))

    vectors = None
    if options.vectors and new.height:
        progress(f"embedding {new.height} rows for similarity search")
        vectors = _embed(new, options.embedder, ("user",) if layout == CLASSIFICATION else ("user", "assistant"))
    shape = TaskShape(
        layout=layout if dataset is None else layout_of(dataset.settings),
        labels=tuple(labels_of(df)),
        metadata=tuple(metadata_columns(df)),
        vector_dims=len(vectors[0]) if vectors else None,
        overlap=options.overlap,
        ask_decision=options.ask_decision,
    )
    created = dataset is None
    if created:
        mine = rg.Dataset(name=name, workspace=workspace, settings=build_settings(shape), client=conn.client)
        theirs = _create(conn, mine)  # another push's, when it created the dataset first
        created = theirs is None
        dataset = mine if created else theirs
        shape = replace(shape, layout=layout_of(dataset.settings))
    if created:
        state = Reconciled(
            fields={f.name for f in dataset.settings.fields},
            questions={q.name for q in dataset.settings.questions},
            metadata={m.name for m in dataset.settings.metadata},
            vectors=bool(vectors),
            labels=shape.labels,
        )
    else:
        state = reconcile(dataset, shape)
    if shape.layout != layout:
        state.notes.append(f"{name!r} has the {shape.layout} layout (made so before): the {layout} rows are sent "
                           "in it")

    plan = RecordPlan(
        key=key,
        layout=shape.layout,
        labels=state.labels if CORRECTED_LABEL in state.questions else shape.labels,
        metadata=shape.metadata,
        fields=frozenset(state.fields),
        questions=frozenset(state.questions),
        metadata_names=frozenset(state.metadata),
    )
    send_vectors = bool(vectors) and state.vectors
    batch_size = max(1, min(options.batch_size, MAX_BATCH))
    advance = bar(new.height) if bar is not None else None
    rows = prepare(new).iter_rows(named=True)

    def batch(start: int) -> list:
        models = []
        for offset in range(min(batch_size, new.height - start)):
            payload = record_payload(next(rows), plan)
            record = rg.Record(
                id=payload["id"],
                fields=payload["fields"],
                metadata=payload["metadata"],
                suggestions=[rg.Suggestion(q, value, score=score, agent=agent)
                             for q, (value, agent, score) in payload["suggestions"].items()],
                vectors={VECTOR: vectors[start + offset]} if send_vectors else None,
            )
            record.dataset = dataset
            models.append(record.api_model())
        return models

    def send(models: list) -> int:
        # What the SDK's `records.bulk_upsert` sends; it would also parse the records the
        # server sends back into models, a fifth of this process's time, that nothing reads.
        # A push of the same rows at the same time races on the records' unique key, and the
        # loser's insert fails (500): the upsert is idempotent, so sending it again updates them.
        items = {"items": [m.model_dump() for m in models]}
        for attempt in range(SEND_ATTEMPTS):
            response = conn.client.api.records.http_client.put(f"/api/v1/datasets/{dataset.id}/records/bulk", json=items)
            if response.status_code < 500 or attempt == SEND_ATTEMPTS - 1:
                break
            time.sleep(0.2 * (attempt + 1))
        response.raise_for_status()  # an HTTPStatusError, which `argilla_errors` explains
        return len(models)

    pushed = 0
    # This process builds batch k+2 while the server stores k and reads k+1. A failed
    # batch stops the push; running it again sends whatever did not arrive.
    in_flight: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="push") as sender:
        for start in range(0, new.height, batch_size):
            models = batch(start)
            if len(in_flight) == IN_FLIGHT:
                pushed += _sent(in_flight.popleft(), advance)
            in_flight.append(sender.submit(send, models))
        while in_flight:
            pushed += _sent(in_flight.popleft(), advance)

    return PushReport(
        dataset=name,
        workspace=workspace.name,
        url=conn.url,
        dataset_url=f"{conn.url}/dataset/{dataset.id}/annotation-mode",
        created=created,
        layout=shape.layout,
        rows=df.height,
        routed=routed.height,
        already=unique.height - new.height,
        pushed=pushed,
        duplicate_ids=duplicates,
        vectors=send_vectors,
        changed=state.changed,
        notes=state.notes,
    )

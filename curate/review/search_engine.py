"""An embedded search engine for argilla-server 2.8, registered as "smallset".

Argilla's server keeps its records in SQL and answers listing, filtering,
sorting, text and similarity search through a pluggable `SearchEngine`
(Elasticsearch or OpenSearch upstream). Neither is installable here, so this
module implements the same interface on a SQLite file: one JSON document per
record (fields, metadata, status, responses, suggestions), vectors beside it,
and queries answered in Python over a dataset's documents. That is plenty for
the few thousand records a review round holds, and the file survives restarts.

It runs inside the server's own virtualenv, so it imports only the standard
library and `argilla_server`. Select it with `ARGILLA_SEARCH_ENGINE=smallset`
in a process that imported this module first (see `launcher.py`). The index
file is `$SMALLSET_SEARCH_INDEX`, else `search-index.sqlite3` in Argilla's
home folder.

What mirrors Elasticsearch's behaviour in Argilla (so that the web UI and the
SDK see the same answers):

* text search: `simple_query_string` semantics on the text of the record's
  fields (all, or the one named): terms are AND-ed, `a | b` is OR, `-a`
  excludes, `"a b"` is a phrase, `ab*` a prefix; case-insensitive word
  tokens; BM25 scores;
* filters: terms and ranges on record properties, metadata, suggestions and
  responses (per user, including the UI's "pending" = no response by me);
* sorting: any scope, missing values last; without a sort, by score, or in
  insertion order; for a user's own view (`user_id`), in a random order that
  is stable per user, as Argilla does to spread annotators over records;
* metrics: terms counts and numeric min/max of metadata; dataset progress;
* similarity search: cosine, score `(1 + cos) / 2`, most or least similar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, List, Optional, Union
from uuid import UUID

from argilla_server.enums import (
    MetadataPropertyType,
    ResponseStatusFilter,
    SimilarityOrder,
    SortOrder,
)
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine import (
    AndFilter,
    Filter,
    FilterScope,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

ENGINE_NAME = "smallset"
INDEX_ENV = "SMALLSET_SEARCH_INDEX"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    dataset_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_dataset ON records (dataset_id, seq);
CREATE TABLE IF NOT EXISTS vectors (
    record_id TEXT NOT NULL,
    settings_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (record_id, settings_id)
);
CREATE INDEX IF NOT EXISTS vectors_by_settings ON vectors (settings_id);
CREATE TABLE IF NOT EXISTS versions (dataset_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""


# --------------------------------------------------------------------------- storage


def index_path() -> str:
    """Where the index lives: `$SMALLSET_SEARCH_INDEX`, else Argilla's home folder."""
    if os.environ.get(INDEX_ENV):
        return os.environ[INDEX_ENV]
    from argilla_server.settings import settings

    return os.path.join(settings.home_path, "search-index.sqlite3")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, UUID):
        return str(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _iso(value: datetime) -> str:
    """Naive UTC ISO text (Argilla stores naive UTC), so that strings sort like times."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


class _Store:
    """One SQLite connection per process (the API server and the worker share the file)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.lock = threading.RLock()
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                self.conn.execute(statement)
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        # Parsed documents per dataset, and views derived from them (text index, sort
        # keys, a user's order), reused while the dataset's version is unchanged.
        self.cache: dict[str, tuple[int, list[dict]]] = {}
        self.views: dict[str, dict[Any, Any]] = {}

    def transaction(self, immediate: bool = True) -> "_Transaction":
        """Writes take the write lock up front; reads (immediate=False) see one snapshot."""
        return _Transaction(self, immediate)

    def bump(self, dataset_ids: Iterable[str]) -> None:
        for dataset_id in set(dataset_ids):
            self.conn.execute(
                "INSERT INTO versions (dataset_id, version) VALUES (?, 1) "
                "ON CONFLICT (dataset_id) DO UPDATE SET version = version + 1",
                (dataset_id,),
            )

    def version(self, dataset_id: str) -> int:
        row = self.conn.execute("SELECT version FROM versions WHERE dataset_id = ?", (dataset_id,)).fetchone()
        return row[0] if row else 0

    def docs(self, dataset_id: str) -> list[dict]:
        """All documents of a dataset by (inserted_at, insertion order); parsed once per change, do not modify."""
        return self._snapshot(dataset_id)[1]

    def _snapshot(self, dataset_id: str) -> tuple[int, list[dict]]:
        with self.lock:
            with self.transaction(immediate=False):
                version = self.version(dataset_id)
                cached = self.cache.get(dataset_id)
                if cached is not None and cached[0] == version:
                    return cached
                rows = self.conn.execute(
                    "SELECT seq, doc FROM records WHERE dataset_id = ? ORDER BY seq", (dataset_id,)
                ).fetchall()
            docs = []
            for seq, text in rows:
                doc = json.loads(text)
                doc["_seq"] = seq
                docs.append(doc)
            docs.sort(key=lambda doc: (doc.get("inserted_at") or "", doc["_seq"]))
            self.cache[dataset_id] = (version, docs)
            self.views[dataset_id] = {}
            return version, docs

    def view(self, dataset_id: str, key: Any, build: Callable[[list[dict]], Any]) -> Any:
        """`build(docs)` of the dataset's documents, computed once per change of the dataset.

        Requests repeat: the web UI pages through one sort, an annotator's queue is
        asked for after every answer. What a request derives from every document
        (a text index, sort keys, a user's order) is kept under `key` until then.
        """
        with self.lock:
            _, docs = self._snapshot(dataset_id)
            views = self.views.setdefault(dataset_id, {})
            if key not in views:
                views[key] = build(docs)
            return views[key]

    def update_doc(self, record_id: str, change) -> None:
        """Read-modify-write one document; `change(doc)` edits it in place."""
        with self.lock, self.transaction():
            row = self.conn.execute(
                "SELECT dataset_id, doc FROM records WHERE record_id = ?", (record_id,)
            ).fetchone()
            if row is None:
                return
            dataset_id, text = row
            doc = json.loads(text)
            change(doc)
            self.conn.execute("UPDATE records SET doc = ? WHERE record_id = ?", (_dumps(doc), record_id))
            self.bump([dataset_id])


class _Transaction:
    def __init__(self, store: _Store, immediate: bool) -> None:
        self.store, self.immediate = store, immediate

    def __enter__(self) -> sqlite3.Connection:
        self.store.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
        return self.store.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")


_stores: dict[tuple[int, str], _Store] = {}
_stores_lock = threading.Lock()


def _store() -> _Store:
    """This process's store (a fresh connection after a fork: rq runs jobs in forked children)."""
    path = os.path.abspath(index_path())
    key = (os.getpid(), path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _Store(path)
        return store


# --------------------------------------------------------------------------- documents


def _record_document(dataset: Dataset, record: Record) -> dict:
    image_fields = {field.name for field in dataset.fields if field.is_image}
    custom_fields = {field.name for field in dataset.fields if field.is_custom}
    fields = {}
    for name, value in (record.fields or {}).items():
        if name in image_fields:
            continue
        fields[name] = str(value) if name in custom_fields and value is not None else value
    return {
        "id": str(record.id),
        "external_id": record.external_id,
        "status": record.status,
        "inserted_at": record.inserted_at,
        "updated_at": record.updated_at,
        "fields": fields,
        "metadata": dict(record.metadata_ or {}),
        "responses": [_response_document(response) for response in (record.responses or [])],
        "suggestions": {
            suggestion.question.name: _suggestion_document(suggestion) for suggestion in (record.suggestions or [])
        },
    }


def _response_document(response: Response) -> dict:
    return {
        "id": str(response.id),
        "status": response.status,
        "user_id": str(response.user_id),
        "values": {question: (value or {}).get("value") for question, value in (response.values or {}).items()},
    }


def _suggestion_document(suggestion: Suggestion) -> dict:
    return {"type": suggestion.type, "agent": suggestion.agent, "score": suggestion.score, "value": suggestion.value}


# --------------------------------------------------------------------------- text search

_TOKEN = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
_BM25_K1, _BM25_B = 1.2, 0.75


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # chat: [{"role": ..., "content": ...}, ...]
        return "\n".join(
            str(item.get("content", "")) if isinstance(item, dict) else _field_text(item) for item in value
        )
    if isinstance(value, dict):
        return "\n".join(_field_text(item) for item in value.values())
    return str(value)


@dataclasses.dataclass
class _Term:
    tokens: list[str]  # one token, or several for a phrase
    prefix: bool = False
    negated: bool = False


def _parse_query(q: str) -> list[list[_Term]]:
    """A subset of Elasticsearch's simple_query_string: OR-groups of AND-ed terms."""
    groups: list[list[_Term]] = [[]]
    for match in re.finditer(r'(?P<op>\|)|(?P<neg>[-+]?)(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s|"]+))', q):
        if match.group("op"):
            groups.append([])
            continue
        negated = match.group("neg") == "-"
        raw = match.group("phrase") if match.group("phrase") is not None else match.group("word")
        raw = raw.strip("()")
        prefix = match.group("word") is not None and raw.endswith("*")
        tokens = _tokens(raw)
        if not tokens:
            continue
        groups[-1].append(_Term(tokens=tokens, prefix=prefix and len(tokens) == 1, negated=negated))
    return [group for group in groups if group]


class _TextIndex:
    """Token lists of a dataset's documents for one field selection, with BM25 statistics."""

    def __init__(self, docs: list[dict], field: Optional[str]) -> None:
        self.tokens: dict[str, list[str]] = {}
        document_frequency: Counter = Counter()
        for doc in docs:
            fields = doc.get("fields") or {}
            values = [fields.get(field)] if field else list(fields.values())
            tokens = _tokens("\n".join(_field_text(value) for value in values))
            self.tokens[doc["id"]] = tokens
            document_frequency.update(set(tokens))
        self.count = max(len(docs), 1)
        self.average_length = (sum(len(t) for t in self.tokens.values()) / self.count) or 1.0
        self.document_frequency = document_frequency

    def _idf(self, token: str) -> float:
        df = self.document_frequency.get(token, 0)
        return math.log(1 + (self.count - df + 0.5) / (df + 0.5))

    def _matches(self, tokens: list[str], term: _Term) -> list[str]:
        """The document tokens that satisfy a term (empty list: no match)."""
        if term.prefix:
            return [token for token in tokens if token.startswith(term.tokens[0])]
        if len(term.tokens) == 1:
            return [token for token in tokens if token == term.tokens[0]]
        n = len(term.tokens)
        hits = [i for i in range(len(tokens) - n + 1) if tokens[i : i + n] == term.tokens]
        return [token for _ in hits for token in term.tokens]

    def score(self, record_id: str, groups: list[list[_Term]]) -> Optional[float]:
        """BM25 score of a document, or None when it does not match."""
        tokens = self.tokens.get(record_id, [])
        best: Optional[float] = None
        for group in groups:
            score, matched = 0.0, True
            positives = 0
            for term in group:
                hits = self._matches(tokens, term)
                if term.negated:
                    if hits:
                        matched = False
                        break
                    continue
                positives += 1
                if not hits:
                    matched = False
                    break
                for token, tf in Counter(hits).items():
                    norm = tf + _BM25_K1 * (1 - _BM25_B + _BM25_B * len(tokens) / self.average_length)
                    score += self._idf(token) * tf * (_BM25_K1 + 1) / norm
            if matched:
                score = score if positives else 1.0
                best = score if best is None else max(best, score)
        return best


# --------------------------------------------------------------------------- filters and sorting


def _scalars(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [item for element in value for item in _scalars(element)]
    if isinstance(value, dict):
        return []
    return [value]


def _term(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _as_time(value: Any) -> Optional[datetime]:
    """A range bound on a date field: ISO text, or epoch milliseconds as Elasticsearch reads numbers."""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


_TIME_PROPERTIES = {"inserted_at", "updated_at"}


def _bounds(filter: RangeFilter, is_time: bool) -> tuple[Any, Any]:
    if is_time:
        return (_as_time(filter.ge) if filter.ge is not None else None,
                _as_time(filter.le) if filter.le is not None else None)
    return _number(_maybe_float(filter.ge)), _number(_maybe_float(filter.le))


def _in_range(values: list, low: Any, high: Any, is_time: bool) -> bool:
    for value in values:
        current = _as_time(value) if is_time else _number(value)
        if current is None:
            continue
        if low is not None and current < low:
            continue
        if high is not None and current > high:
            continue
        return True
    return False


def _maybe_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value


# Filters and sort keys are compiled once per request into functions of a document:
# a request looks at every document of the dataset, so whatever does not depend on
# the document (user ids as text, wanted terms, range bounds) is worked out first.

Predicate = Callable[[dict], bool]
Values = Callable[[dict], list]


def _user_id(user: Optional[User]) -> Optional[str]:
    return None if user is None else str(user.id)


def _user_responses(doc: dict, user_id: Optional[str]) -> list[dict]:
    responses = doc.get("responses") or []
    if user_id is None or not responses:
        return responses
    return [response for response in responses if response.get("user_id") == user_id]


def _scope_values(scope: FilterScope) -> Values:
    """The values a filter or sort compares, as a function of the document."""
    if isinstance(scope, MetadataFilterScope):
        name = scope.metadata_property
        return lambda doc: _scalars((doc.get("metadata") or {}).get(name))
    if isinstance(scope, RecordFilterScope):
        prop = str(scope.property)
        return lambda doc: _scalars(doc.get(prop))
    if isinstance(scope, SuggestionFilterScope):
        question, prop = scope.question, str(scope.property or "value")
        return lambda doc: _scalars(((doc.get("suggestions") or {}).get(question) or {}).get(prop))
    if isinstance(scope, ResponseFilterScope):
        user_id, question, prop = _user_id(scope.user), scope.question, scope.property or "status"
        if question:
            return lambda doc: [
                v for response in _user_responses(doc, user_id)
                for v in _scalars((response.get("values") or {}).get(question))
            ]
        return lambda doc: [response.get(prop) for response in _user_responses(doc, user_id)]
    raise ValueError(f"Cannot process search scope {scope}")


def _compile_filter(filter: Filter) -> Predicate:
    if isinstance(filter, AndFilter):
        parts = [_compile_filter(inner) for inner in filter.filters]
        return lambda doc: all(part(doc) for part in parts)
    scope = filter.scope
    if isinstance(scope, ResponseFilterScope) and not scope.question and isinstance(filter, TermsFilter):
        return _response_status_filter(filter)
    values = _scope_values(scope)
    if isinstance(filter, TermsFilter):
        wanted = {str(value) for value in filter.values}
        return lambda doc: any(_term(value) in wanted for value in values(doc))
    if isinstance(filter, RangeFilter):
        is_time = isinstance(scope, RecordFilterScope) and str(scope.property) in _TIME_PROPERTIES
        low, high = _bounds(filter, is_time)
        return lambda doc: _in_range(values(doc), low, high, is_time)
    raise ValueError(f"Cannot process filter {filter}")


def _response_status_filter(filter: TermsFilter) -> Predicate:
    """Response status, as the UI asks: "pending" means no response (by the user, when one is given)."""
    user_id = _user_id(filter.scope.user)
    wanted = {str(value) for value in filter.values}
    pending = ResponseStatusFilter.pending.value in wanted

    def matches(doc: dict) -> bool:
        responses = _user_responses(doc, user_id)
        if not responses:
            return pending
        return any(str(response.get("status")) in wanted for response in responses)

    return matches


def _sort_key(value: Any) -> tuple:
    number = _number(value)
    if number is not None:
        return (0, number, "")
    return (1, 0.0, _term(value))


def _scope_key(scope: FilterScope) -> tuple:
    """What identifies a scope across requests (its user by id)."""
    if isinstance(scope, ResponseFilterScope):
        return ("response", scope.question, scope.property, _user_id(scope.user))
    return (type(scope).__name__, *(str(getattr(scope, name, None)) for name in ("metadata_property", "property", "question")))


def _sort_keys(docs: list[dict], scope: FilterScope, descending: bool) -> dict[str, tuple]:
    """Each document's sort key for one scope and direction; documents without a value are left out."""
    is_time = isinstance(scope, RecordFilterScope) and str(scope.property) in _TIME_PROPERTIES
    by_mean = isinstance(scope, ResponseFilterScope)
    values_of = _scope_values(scope)
    keys = {}
    for doc in docs:
        values = values_of(doc)
        if not values:
            continue
        candidates = [(0, 0.0, str(v)) if is_time else _sort_key(v) for v in values]
        if by_mean and all(k[0] == 0 for k in candidates):
            keys[doc["id"]] = (0, sum(k[1] for k in candidates) / len(candidates), "")  # Argilla sorts responses by their mean
        else:
            keys[doc["id"]] = max(candidates) if descending else min(candidates)
    return keys


def _apply_sort(
    docs: list[dict], sort: List[Order], keys_for: Callable[[Order, bool], dict[str, tuple]]
) -> list[dict]:
    """Stable multi-key sort; like Elasticsearch, documents without a value go last in both orders.

    `keys_for(order, descending)` gives each document's key (see `_sort_keys`).
    """
    ordered = list(docs)
    for order in reversed(sort):
        descending = str(order.order) == SortOrder.desc.value
        keys = keys_for(order, descending)
        keyed = [doc for doc in ordered if doc["id"] in keys]
        missing = [doc for doc in ordered if doc["id"] not in keys]
        keyed.sort(key=lambda doc: keys[doc["id"]], reverse=descending)
        ordered = keyed + missing
    return ordered


def _user_random(user_id: Any, record_id: str) -> float:
    """A per-user random number in (0, 1], stable across calls."""
    digest = hashlib.sha256(f"{user_id}:{record_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / 2**64


def _text_query(query: Optional[Union[TextQuery, str]]) -> Optional[TextQuery]:
    if query is None:
        return None
    return TextQuery(q=query) if isinstance(query, str) else query


def _cosine(a: list[float], b: list[float]) -> Optional[float]:
    if len(a) != len(b):
        return None
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else None


# --------------------------------------------------------------------------- the engine


@SearchEngine.register(ENGINE_NAME)
@dataclasses.dataclass
class SmallsetSearchEngine(SearchEngine):
    """Argilla's SearchEngine over a SQLite file. Instances are cheap: one per request."""

    path: str = ""

    @classmethod
    async def new_instance(cls) -> "SmallsetSearchEngine":
        return cls(path=index_path())

    @property
    def store(self) -> _Store:
        return _store()

    async def close(self):
        pass

    async def ping(self) -> bool:
        try:
            with self.store.lock:
                self.store.conn.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    async def info(self) -> dict:
        return {"name": ENGINE_NAME, "distribution": "sqlite", "version": sqlite3.sqlite_version, "path": self.path}

    # ----------------------------------------------------------------- index lifecycle

    async def create_index(self, dataset: Dataset):
        with self.store.lock, self.store.transaction():
            self.store.bump([str(dataset.id)])

    async def delete_index(self, dataset: Dataset):
        dataset_id = str(dataset.id)
        with self.store.lock, self.store.transaction() as conn:
            conn.execute("DELETE FROM records WHERE dataset_id = ?", (dataset_id,))
            conn.execute("DELETE FROM vectors WHERE dataset_id = ?", (dataset_id,))
            self.store.bump([dataset_id])
        self.store.cache.pop(dataset_id, None)

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty):
        pass  # documents keep all metadata; nothing to map

    async def configure_index_vectors(self, vector_settings: VectorSettings):
        pass

    # ----------------------------------------------------------------- documents

    async def index_records(self, dataset: Dataset, records: Iterable[Record]):
        dataset_id = str(dataset.id)
        rows, vector_rows, record_ids = [], [], []
        for record in records:
            record_id = str(record.id)
            record_ids.append(record_id)
            rows.append((record_id, dataset_id, _dumps(_record_document(dataset, record))))
            for vector in record.vectors or []:
                vector_rows.append((record_id, str(vector.vector_settings_id), dataset_id, _dumps(list(vector.value))))
        if not rows:
            return
        with self.store.lock, self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO records (record_id, dataset_id, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (record_id) DO UPDATE SET doc = excluded.doc, dataset_id = excluded.dataset_id",
                rows,
            )
            conn.executemany("DELETE FROM vectors WHERE record_id = ?", [(rid,) for rid in record_ids])
            conn.executemany(
                "INSERT INTO vectors (record_id, settings_id, dataset_id, value) VALUES (?, ?, ?, ?)", vector_rows
            )
            self.store.bump([dataset_id])

    async def partial_record_update(self, record: Record, **update):
        values = json.loads(_dumps(update))
        self.store.update_doc(str(record.id), lambda doc: doc.update(values))

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]):
        ids = [(str(record.id),) for record in records]
        with self.store.lock, self.store.transaction() as conn:
            conn.executemany("DELETE FROM records WHERE record_id = ?", ids)
            conn.executemany("DELETE FROM vectors WHERE record_id = ?", ids)
            self.store.bump([str(dataset.id)])

    async def update_record_response(self, response: Response):
        document = json.loads(_dumps(_response_document(response)))

        def change(doc: dict) -> None:
            others = [r for r in doc.get("responses") or [] if r.get("id") != document["id"]]
            doc["responses"] = others + [document]

        self.store.update_doc(str(response.record_id), change)

    async def delete_record_response(self, response: Response):
        response_id = str(response.id)

        def change(doc: dict) -> None:
            doc["responses"] = [r for r in doc.get("responses") or [] if r.get("id") != response_id]

        self.store.update_doc(str(response.record_id), change)

    async def update_record_suggestion(self, suggestion: Suggestion):
        name = suggestion.question.name
        document = json.loads(_dumps(_suggestion_document(suggestion)))
        self.store.update_doc(
            str(suggestion.record_id), lambda doc: doc.setdefault("suggestions", {}).__setitem__(name, document)
        )

    async def delete_record_suggestion(self, suggestion: Suggestion):
        name = suggestion.question.name
        self.store.update_doc(str(suggestion.record_id), lambda doc: (doc.get("suggestions") or {}).pop(name, None))

    # ----------------------------------------------------------------- progress and metrics

    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        counts = Counter(str(doc.get("status")) for doc in self.store.docs(str(dataset.id)))
        return {"total": sum(counts.values()), **counts}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        user_id = _user_id(user)
        counts = Counter(
            str(response.get("status"))
            for doc in self.store.docs(str(dataset.id))
            for response in _user_responses(doc, user_id)
        )
        return {"total": sum(counts.values()), **counts}

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        docs = self.store.docs(str(metadata_property.dataset_id))
        values = [v for doc in docs for v in _scalars((doc.get("metadata") or {}).get(metadata_property.name))]
        if metadata_property.type == MetadataPropertyType.terms:
            documents_per_term: Counter = Counter()
            for doc in docs:
                documents_per_term.update({_term(v) for v in _scalars((doc.get("metadata") or {}).get(metadata_property.name))})
            buckets = sorted(documents_per_term.items(), key=lambda item: (-item[1], item[0]))
            return TermsMetrics(
                total=len(values), values=[TermsMetrics.TermCount(term=term, count=count) for term, count in buckets]
            )
        numbers = [n for n in (_number(v) for v in values) if n is not None]
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(
                min=int(min(numbers)) if numbers else None, max=int(max(numbers)) if numbers else None
            )
        return FloatMetadataMetrics(min=min(numbers) if numbers else None, max=max(numbers) if numbers else None)

    # ----------------------------------------------------------------- search

    def _select(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]],
        filter: Optional[Filter],
        docs: Optional[list[dict]] = None,
    ) -> list[tuple[dict, Optional[float]]]:
        """Documents that pass the filter and the text query, with text scores.

        In the order of `docs`, by default the dataset's (inserted_at, insertion order).
        """
        dataset_id = str(dataset.id)
        if docs is None:
            docs = self.store.docs(dataset_id)
        if filter is not None:
            matches = _compile_filter(filter)
            docs = [doc for doc in docs if matches(doc)]
        text = _text_query(query)
        if text is None:
            return [(doc, None) for doc in docs]
        groups = _parse_query(text.q)
        if not groups:
            return []
        index = self.store.view(dataset_id, ("text", text.field), lambda all_docs: _TextIndex(all_docs, text.field))
        scored = []
        for doc in docs:
            score = index.score(doc["id"], groups)
            if score is not None:
                scored.append((doc, score))
        return scored

    def _user_order(self, dataset: Dataset, user_id: str) -> tuple[list[dict], dict[str, float]]:
        """The dataset's documents in the user's random order, and each one's random number."""

        def build(docs: list[dict]) -> tuple[list[dict], dict[str, float]]:
            randoms = {doc["id"]: _user_random(user_id, doc["id"]) for doc in docs}
            return sorted(docs, key=lambda doc: -randoms[doc["id"]]), randoms

        return self.store.view(str(dataset.id), ("user order", user_id), build)

    def _sorted(self, dataset: Dataset, docs: list[dict], sort: List[Order]) -> list[dict]:
        """`docs` in the order asked, with each sort's keys computed once per change of the dataset."""
        dataset_id = str(dataset.id)

        def keys_for(order: Order, descending: bool) -> dict[str, tuple]:
            key = ("sort", _scope_key(order.scope), descending)
            return self.store.view(dataset_id, key, lambda all_docs: _sort_keys(all_docs, order.scope, descending))

        return _apply_sort(docs, sort, keys_for)

    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[str] = None,
    ) -> SearchResponses:
        randoms: Optional[dict[str, float]] = None
        base = None
        if user_id is not None and not sort:
            # A user's own view comes in a random order that is stable per user (a sort overrides it).
            base, randoms = self._user_order(dataset, str(user_id))
        selected = self._select(dataset, query, filter, base if query is None else None)

        def score(doc: dict, text_score: Optional[float]) -> float:
            value = 1.0 if text_score is None else text_score
            return value * randoms[doc["id"]] if randoms is not None else value

        if sort:
            docs = self._sorted(dataset, [doc for doc, _ in selected], sort)
            page = [(doc, None) for doc in docs[offset : offset + limit]]
        else:
            if query is not None:
                selected.sort(key=lambda pair: -score(*pair))
            page = [(doc, score(doc, text_score)) for doc, text_score in selected[offset : offset + limit]]
        return SearchResponses(
            items=[SearchResponseItem(record_id=UUID(doc["id"]), score=value) for doc, value in page],
            total=len(selected),
        )

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        settings_id = str(vector_settings.id)
        excluded = None
        if not value:
            excluded = str(record.id)
            with self.store.lock:
                row = self.store.conn.execute(
                    "SELECT value FROM vectors WHERE record_id = ? AND settings_id = ?", (excluded, settings_id)
                ).fetchone()
            value = json.loads(row[0]) if row else record.vector_value_by_vector_settings(vector_settings)
        if not value:
            raise ValueError("Cannot find a vector value to apply with provided info")
        sign = -1.0 if order == SimilarityOrder.least_similar else 1.0

        candidates = {doc["id"] for doc, _ in self._select(dataset, query, filter)}
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT record_id, value FROM vectors WHERE settings_id = ?", (settings_id,)
            ).fetchall()
        hits = []
        for record_id, text in rows:
            if record_id == excluded or record_id not in candidates:
                continue
            cosine = _cosine(value, json.loads(text))
            if cosine is None:
                continue
            score = (1 + sign * cosine) / 2
            if threshold is None or score >= threshold:
                hits.append((score, record_id))
        hits.sort(key=lambda hit: -hit[0])
        hits = hits[:max_results]
        return SearchResponses(
            items=[SearchResponseItem(record_id=UUID(record_id), score=score) for score, record_id in hits],
            total=len(hits),
        )

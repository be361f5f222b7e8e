"""An embedded search engine for argilla-server 2.8, registered as "smallset".

Argilla's server keeps its records in SQL and answers listing, filtering,
sorting, text and similarity search through a pluggable `SearchEngine`
(Elasticsearch or OpenSearch upstream). Neither is installable here, so this
module implements the same interface on a SQLite file: one JSON document per
record (fields, metadata, status, responses, suggestions), vectors beside it,
and queries answered in Python over a dataset's documents. That is plenty for
the few thousand records a review round holds, and the file survives restarts.

It runs inside the server's own virtualenv, so it imports only the standard
library, `argilla_server` and numpy (which argilla-server brings, through
`datasets`). Select it with `ARGILLA_SEARCH_ENGINE=smallset`
in a process that imported this module first (see `launcher.py`). The index
file is `$SMALLSET_SEARCH_INDEX`, else `search-index.sqlite3` in Argilla's
home folder.

What mirrors Elasticsearch's behaviour in Argilla (so that the web UI and the
SDK see the same answers):

* text search: Elasticsearch's `simple_query_string` (Lucene's SimpleQueryParser,
  with the options Argilla sends) on the text of the record's fields (all, or
  the one named): terms are AND-ed, `a | b` is OR, `-a` excludes, `(...)` groups,
  operators bind left to right, `"a b"` is a phrase and `"a b"~N` one with slop
  N, `ab*` a prefix, `abc~N` a fuzzy term (at most N edits, 2 for a bare `~`);
  a malformed query degrades as there (an unclosed `(` or `"` is ignored);
  case-insensitive word tokens; BM25 scores;
* filters: terms and ranges on record properties, metadata, suggestions and
  responses (per user, including the UI's "pending" = no response by me);
* sorting: any scope, missing values last; without a sort, by score, or in
  insertion order; for a user's own view (`user_id`), in a random order that
  is stable per user, as Argilla does to spread annotators over records;
* metrics: terms counts and numeric min/max of metadata; dataset progress;
* similarity search: cosine, score `(1 + cos) / 2`, most or least similar,
  from a float32 matrix per vector setting that each process builds once from
  the stored vectors and then updates with the rows written or deleted since
  (every vector write takes a revision), not from a scan of the table.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import sqlite3
import threading
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, List, Optional, Union
from uuid import UUID

import numpy as np

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
from argilla_server.search_engine.commons import es_simple_query_string

ENGINE_NAME = "smallset"
INDEX_ENV = "SMALLSET_SEARCH_INDEX"
SCHEMA_VERSION = 2  # 2: vectors as float32 blobs with a revision, and deletions kept for other processes

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
    value BLOB NOT NULL,
    rev INTEGER NOT NULL,
    PRIMARY KEY (record_id, settings_id)
);
CREATE INDEX IF NOT EXISTS vectors_by_settings ON vectors (settings_id, rev);
CREATE INDEX IF NOT EXISTS vectors_by_dataset ON vectors (dataset_id);
CREATE TABLE IF NOT EXISTS vector_deletions (settings_id TEXT NOT NULL, record_id TEXT NOT NULL, rev INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vector_deletions_by_settings ON vector_deletions (settings_id, rev);
CREATE TABLE IF NOT EXISTS versions (dataset_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""
_FLOAT32 = np.dtype("<f4")
# Deletions are kept for processes whose matrices are behind; past this many the oldest half goes
# (a process behind those rebuilds its matrix from the table).
_DELETIONS_KEPT = 100_000


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
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is not None and int(found[0]) < 2:
                _vectors_to_blobs(conn)
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            _set_meta(conn, "schema_version", max(SCHEMA_VERSION, int(found[0]) if found else 0))
        # Parsed documents per dataset, and views derived from them (text index, sort
        # keys, a user's order), reused while the dataset's version is unchanged.
        self.cache: dict[str, tuple[int, list[dict]]] = {}
        self.views: dict[str, dict[Any, Any]] = {}
        # Each vector setting's matrix, kept up to date from the table's revisions.
        self.matrices: dict[str, _VectorIndex] = {}

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


    def vector_index(self, settings_id: str, dimensions: int) -> "_VectorIndex":
        """The setting's matrix as of now: built once, then brought up to date with what changed since.

        Every write of vectors takes a new revision (`vector_rev`) and stamps the rows it
        writes and the deletions it records with it, so that a process (another API
        worker, the rq worker) reads only rows newer than its matrix.
        """
        with self.lock, self.transaction(immediate=False) as conn:
            rev = _meta_int(conn, "vector_rev")
            index = self.matrices.get(settings_id)
            if index is not None and index.dimensions == dimensions and index.rev == rev:
                return index
            if index is None or index.dimensions != dimensions or index.rev < _meta_int(conn, "vector_deletions_pruned"):
                index = _VectorIndex(dimensions)
                changed = conn.execute(
                    "SELECT record_id, value FROM vectors WHERE settings_id = ? ORDER BY rowid", (settings_id,)
                ).fetchall()
            else:
                gone = conn.execute(
                    "SELECT record_id FROM vector_deletions WHERE settings_id = ? AND rev > ?", (settings_id, index.rev)
                ).fetchall()
                index.remove(record_id for (record_id,) in gone)
                changed = conn.execute(
                    "SELECT record_id, value FROM vectors WHERE settings_id = ? AND rev > ? ORDER BY rowid",
                    (settings_id, index.rev),
                ).fetchall()
            index.put(changed)
            index.rev = rev
            self.matrices[settings_id] = index
            return index


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (key, str(value)))


def _vector_blob(value: Iterable[float]) -> bytes:
    return np.asarray(list(value), dtype=_FLOAT32).tobytes()


def _vectors_to_blobs(conn: sqlite3.Connection) -> None:
    """Schema 1 kept vectors as JSON text: rewrite them as float32 blobs at revision 0."""
    old = conn.execute("SELECT record_id, settings_id, dataset_id, value FROM vectors").fetchall()
    conn.execute("DROP TABLE vectors")
    for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO vectors (record_id, settings_id, dataset_id, value, rev) VALUES (?, ?, ?, ?, 0)",
        [(record_id, settings_id, dataset_id, _vector_blob(json.loads(value))) for record_id, settings_id, dataset_id, value in old],
    )


def _next_vector_rev(conn: sqlite3.Connection) -> int:
    """A new revision for the vector rows this write transaction changes (writes are serialized)."""
    rev = _meta_int(conn, "vector_rev") + 1
    _set_meta(conn, "vector_rev", rev)
    return rev


def _vector_keys(conn: sqlite3.Connection, record_ids: list[str]) -> set[tuple[str, str]]:
    """The (record, setting) pairs that have a vector, for these records."""
    found: set[tuple[str, str]] = set()
    for start in range(0, len(record_ids), 500):
        chunk = record_ids[start : start + 500]
        found.update(conn.execute(
            f"SELECT record_id, settings_id FROM vectors WHERE record_id IN ({','.join('?' * len(chunk))})", chunk
        ).fetchall())
    return found


def _delete_vectors(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]], rev: int) -> None:
    """Delete vectors and record the deletions, so that other processes drop them from their matrices."""
    keys = list(keys)
    if not keys:
        return
    conn.executemany("DELETE FROM vectors WHERE record_id = ? AND settings_id = ?", keys)
    conn.executemany("INSERT INTO vector_deletions (settings_id, record_id, rev) VALUES (?, ?, ?)",
                     [(settings_id, record_id, rev) for record_id, settings_id in keys])
    (count,) = conn.execute("SELECT count(*) FROM vector_deletions").fetchone()
    if count > _DELETIONS_KEPT:
        (cutoff,) = conn.execute("SELECT rev FROM vector_deletions ORDER BY rev DESC LIMIT 1 OFFSET ?",
                                 (_DELETIONS_KEPT // 2,)).fetchone()
        conn.execute("DELETE FROM vector_deletions WHERE rev <= ?", (cutoff,))
        _set_meta(conn, "vector_deletions_pruned", cutoff)


class _VectorIndex:
    """One vector setting's vectors as a float32 matrix of unit rows, one row per record.

    A deleted record's row is reused by the next new one. Rows that cannot be
    compared (zero or not finite) stay in it, unusable, as they were skipped before.
    """

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.rev = -1
        self.slots: dict[str, int] = {}
        self.ids: list[Optional[str]] = []  # by slot
        self.free: list[int] = []
        self.used = 0
        self.matrix = np.zeros((0, dimensions), dtype=np.float32)
        self.usable = np.zeros(0, dtype=bool)

    def remove(self, record_ids: Iterable[str]) -> None:
        for record_id in record_ids:
            slot = self.slots.pop(record_id, None)
            if slot is not None:
                self.usable[slot] = False
                self.ids[slot] = None
                self.free.append(slot)

    def put(self, rows: list[tuple[str, bytes]]) -> None:
        """Add or replace rows; a vector of another length than the setting's leaves the matrix."""
        width = self.dimensions * _FLOAT32.itemsize
        self.remove(record_id for record_id, blob in rows if len(blob) != width)
        rows = [(record_id, blob) for record_id, blob in rows if len(blob) == width]
        if not rows:
            return
        values = np.frombuffer(b"".join(blob for _, blob in rows), dtype=_FLOAT32).reshape(len(rows), self.dimensions)
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        usable = np.isfinite(norms) & (norms > 0)
        units = np.zeros(values.shape, dtype=np.float32)
        units[usable] = values[usable] / norms[usable, None]
        slots = np.array([self._slot(record_id) for record_id, _ in rows])
        self.matrix[slots] = units
        self.usable[slots] = usable

    def _slot(self, record_id: str) -> int:
        slot = self.slots.get(record_id)
        if slot is None:
            if self.free:
                slot = self.free.pop()
            else:
                if self.used == len(self.matrix):
                    capacity = max(64, 2 * len(self.matrix))
                    self.matrix = np.concatenate([self.matrix, np.zeros((capacity - len(self.matrix), self.dimensions),
                                                                        dtype=np.float32)])
                    self.usable = np.concatenate([self.usable, np.zeros(capacity - len(self.usable), dtype=bool)])
                slot, self.used = self.used, self.used + 1
                self.ids.append(None)
            self.slots[record_id] = slot
            self.ids[slot] = record_id
        return slot

    def vector(self, record_id: str) -> Optional[list[float]]:
        """A record's vector (scaled to length 1), or None when it has none of this setting's length."""
        slot = self.slots.get(record_id)
        return None if slot is None else self.matrix[slot].tolist()

    def search(self, value: List[float], candidates: Optional[Iterable[str]], excluded: Optional[str], sign: float,
               threshold: Optional[float], limit: int) -> list[tuple[float, str]]:
        """(score, record id) of the best rows among `candidates` (None: all): score (1 + sign * cos) / 2."""
        query = np.asarray(value, dtype=np.float64)
        norm = float(np.linalg.norm(query)) if query.shape == (self.dimensions,) else 0.0
        if not (norm > 0 and math.isfinite(norm)) or limit <= 0:
            return []
        # einsum, not `@`: a matrix-vector product needs one core, and BLAS's threads, one set per API process
        # on two cores, made a slow request in twenty (p95 50 ms against 1 ms).
        cosines = np.einsum("ij,j->i", self.matrix[: self.used], (query / norm).astype(np.float32))
        scores = (1 + sign * np.clip(cosines, -1, 1).astype(np.float64)) / 2
        if candidates is None:
            mask = self.usable[: self.used].copy()
        else:
            mask = np.zeros(self.used, dtype=bool)
            mask[[slot for slot in map(self.slots.get, candidates) if slot is not None]] = True
            mask &= self.usable[: self.used]
        if excluded is not None and excluded in self.slots:
            mask[self.slots[excluded]] = False
        if threshold is not None:
            mask &= scores >= threshold
        rows = np.flatnonzero(mask)
        if len(rows) > limit:  # the best `limit` rows; of those tied with the last one, the first rows
            kth = np.partition(scores[rows], len(rows) - limit)[len(rows) - limit]
            rows = np.concatenate([rows[scores[rows] > kth], rows[scores[rows] == kth]])[:limit]
        rows = rows[np.lexsort((rows, -scores[rows]))]  # best first, ties in row order
        return [(float(scores[row]), self.ids[row]) for row in rows]


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
#
# Elasticsearch answers Argilla's text search with `simple_query_string`, which is
# Lucene's SimpleQueryParser: `+` and, `|` or, `-` not, `"..."` phrase, `"..."~N` a
# phrase with slop N, `word~N` a fuzzy term (N edits at most 2, a bare `~` is 2),
# `word*` a prefix, `(...)` precedence, `\` escapes. Operators bind left to right
# (`a | b c` is `(a | b) c`); what cannot be parsed is ignored, never an error (an
# unclosed `(` or `"` is read as an ordinary character, a `~x` as no fuzziness).
# The parser below follows Lucene's code step by step, so that a query means here
# what it means in Argilla on Elasticsearch; the options Argilla sends with it
# (operator, fuzzy expansions and transpositions) are read from argilla-server.

_TOKEN = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
_BM25_K1, _BM25_B = 1.2, 0.75
_QUERY_OPTIONS = es_simple_query_string("fields.*", "")["simple_query_string"]
MUST, SHOULD, MUST_NOT = "must", "should", "must_not"
_DEFAULT_OPERATOR = MUST if str(_QUERY_OPTIONS.get("default_operator", "OR")).upper() == "AND" else SHOULD
_FUZZY_MAX_EXPANSIONS = int(_QUERY_OPTIONS.get("fuzzy_max_expansions", 50))
_FUZZY_TRANSPOSITIONS = bool(_QUERY_OPTIONS.get("fuzzy_transpositions", True))
_MAX_EDITS = 2  # Lucene's LevenshteinAutomata.MAXIMUM_SUPPORTED_DISTANCE
_WHITESPACE = " \t\n\r"
# Positions of different fields (and chat messages) are this far apart, so that no phrase spans two.
_SEGMENT_GAP = 1 << 32
_CODE_WIDTH = 40  # characters of each token kept for the fuzzy search's arrays


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _segments(value: Any) -> list[str]:
    """The texts of a field value that Elasticsearch indexes apart: a string, or each chat message's content."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):  # chat: [{"role": ..., "content": ...}, ...]
        return [
            text
            for item in value
            for text in ([str(item.get("content", ""))] if isinstance(item, dict) else _segments(item))
        ]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _segments(item)]
    return [str(value)]


@dataclasses.dataclass(frozen=True)
class _Word:
    token: str


@dataclasses.dataclass(frozen=True)
class _Phrase:
    tokens: tuple[str, ...]
    slop: int


@dataclasses.dataclass(frozen=True)
class _Fuzzy:
    text: str  # lower-cased, not split into tokens (Lucene normalizes a fuzzy term, it does not analyze it)
    edits: int


@dataclasses.dataclass(frozen=True)
class _Prefix:
    text: str


@dataclasses.dataclass(frozen=True)
class _All:
    pass


@dataclasses.dataclass
class _Bool:
    clauses: list[tuple[str, Any]]  # (MUST | SHOULD | MUST_NOT, query)


@dataclasses.dataclass
class _ParseState:
    index: int
    end: int
    top: Any = None
    current: Optional[str] = None
    previous: Optional[str] = None
    negations: int = 0


class _QueryParser:
    """Lucene's SimpleQueryParser with every operator on, building the query tree Elasticsearch runs.

    `precedence=False` reads parentheses as ordinary characters, as Lucene does
    without its PRECEDENCE flag: the fallback for a query nested too deep to recurse.
    """

    def __init__(self, text: str, precedence: bool = True) -> None:
        self.data = text
        self.precedence = precedence
        self.token_end = set('"|+' + _WHITESPACE + ("()" if precedence else ""))

    def parse(self) -> Any:
        state = _ParseState(0, len(self.data))
        self._sub_query(state)
        return state.top

    def _sub_query(self, state: _ParseState) -> None:
        data = self.data
        while state.index < state.end:
            char = data[state.index]
            if char == "(" and self.precedence:
                self._consume_sub_query(state)
            elif char == ")" and self.precedence:
                state.index += 1  # extraneous
            elif char == '"':
                self._consume_phrase(state)
            elif char in "+|":
                # An operator before any clause, or after another one, is ignored.
                if state.current is None and state.top is not None:
                    state.current = MUST if char == "+" else SHOULD
                state.index += 1
            elif char == "-":
                state.negations += 1  # two in a row cancel out
                state.index += 1
                continue
            elif char in _WHITESPACE:
                state.index += 1
            else:
                self._consume_token(state)
            state.negations = 0  # a `-` applies to what follows it directly

    def _scan(self, state: _ParseState, closes: Callable[[str], bool]) -> tuple[int, list[str]]:
        """From an opening `(` or `"` to the first unescaped character that `closes` it (or the end).

        Returns where the inside starts and its characters (escapes removed); the state stops on the closer.
        """
        data = self.data
        state.index += 1
        start, chars, escaped = state.index, [], False
        while state.index < state.end:
            char = data[state.index]
            if not escaped:
                if char == "\\":
                    escaped = True
                    state.index += 1
                    continue
                if closes(char):
                    break
            escaped = False
            chars.append(char)
            state.index += 1
        return start, chars

    @staticmethod
    def _closed(state: _ParseState, start: int) -> bool:
        """Whether a scan found something to parse: never closed, its opener is ignored; closed at once
        (`()`, `""`), the operator before it had nothing to apply to."""
        if state.index == state.end:
            state.index = start
            return False
        if state.index == start:
            state.current = None
            state.index += 1
            return False
        return True

    def _consume_sub_query(self, state: _ParseState) -> None:
        depth = 1

        def closes(char: str) -> bool:
            nonlocal depth
            depth += {"(": 1, ")": -1}.get(char, 0)
            return depth == 0

        start, _ = self._scan(state, closes)
        if self._closed(state, start):
            inner = _ParseState(start, state.index)
            self._sub_query(inner)
            self._add(state, inner.top)
            state.index += 1

    def _consume_phrase(self, state: _ParseState) -> None:
        start, chars = self._scan(state, lambda char: char == '"')
        has_slop = False
        if state.end > state.index + 1 and self.data[state.index + 1] == "~":
            state.index += 1
            has_slop = state.end > state.index + 1
        if self._closed(state, start):
            slop = self._fuzziness(state) if has_slop else 0
            self._add(state, _phrase_query("".join(chars), slop))
            state.index += 1

    def _consume_token(self, state: _ParseState) -> None:
        data = self.data
        chars: list[str] = []
        escaped = prefix = fuzzy = False
        while state.index < state.end:
            char = data[state.index]
            if not escaped:
                if char == "\\":
                    escaped, prefix = True, False
                    state.index += 1
                    continue
                if char in self.token_end:
                    break
                if chars and char == "~":
                    fuzzy = True
                    break
                prefix = bool(chars) and char == "*"
            escaped = False
            chars.append(char)
            state.index += 1
        if not chars:
            return
        text = "".join(chars)
        if fuzzy:
            edits = min(self._fuzziness(state), _MAX_EDITS)
            self._add(state, _default_query(text) if edits == 0 else _Fuzzy(text.lower(), edits))
        elif prefix:
            self._add(state, _Prefix(text[:-1].lower()))
        else:
            self._add(state, _default_query(text))

    def _fuzziness(self, state: _ParseState) -> int:
        """The number after `~` (a slop or edit distance): none is 2, anything else that is not an int is 0."""
        data = self.data
        if data[state.index] != "~":
            return 0
        chars = []
        while state.index < state.end:
            state.index += 1
            if state.index < state.end:
                if data[state.index] in self.token_end:
                    break
                chars.append(data[state.index])
        text = "".join(chars)
        if not text:
            return 2
        if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**31) <= int(text) < 2**31:
            return 0  # Java's Integer.parseInt fails: Lucene swallows it
        return max(int(text), 0)

    @staticmethod
    def _add(state: _ParseState, query: Any) -> None:
        """Lucene's buildQueryTree: a change of operator makes what came before one clause of a new node."""
        if query is None:
            return
        if state.negations % 2:
            query = _Bool([(MUST_NOT, query), (SHOULD, _All())])
        if state.top is None:
            state.top = query
        else:
            if state.current is None:
                state.current = _DEFAULT_OPERATOR
            if state.previous != state.current:
                state.top = _Bool([(state.current, state.top)])
            state.top.clauses.append((state.current, query))
            state.previous = state.current
        state.current = None


def _default_query(text: str) -> Any:
    """A word as Elasticsearch analyzes it: no token is nothing, several are joined by the default operator."""
    tokens = _tokens(text)
    if not tokens:
        return None
    if len(tokens) == 1:
        return _Word(tokens[0])
    return _Bool([(_DEFAULT_OPERATOR, _Word(token)) for token in tokens])


def _phrase_query(text: str, slop: int) -> Any:
    tokens = _tokens(text)
    if not tokens:
        return None
    if len(tokens) == 1:
        return _Word(tokens[0])
    return _Phrase(tuple(tokens), slop)


_MAX_NESTING = 100


def _parse_query(q: str) -> Any:
    """The query tree of a simple_query_string, or None when it holds nothing to search for.

    Parentheses nested deeper than Python recurses comfortably are read as characters.
    """
    depth = deepest = 0
    for char in q:
        depth = depth + 1 if char == "(" else max(depth - 1, 0) if char == ")" else depth
        deepest = max(deepest, depth)
    try:
        return _QueryParser(q, precedence=deepest <= _MAX_NESTING).parse()
    except RecursionError:
        return _QueryParser(q, precedence=False).parse()


def _edit_distance(a: str, b: str, limit: int, transpositions: bool) -> int:
    """Levenshtein distance (with adjacent transpositions when asked: Lucene's fuzzy query), or limit + 1 beyond it."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: Optional[list[int]] = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if transpositions and before is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                value = min(value, before[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return limit + 1
        before, previous = previous, current
    return min(previous[-1], limit + 1)


def _phrase_frequency(lists: list[list[int]], slop: int, repeats: bool) -> float:
    """Lucene's phrase frequency: each match counts 1 / (1 + its length); no match is 0.

    `lists[i]` holds the positions of the phrase's i-th word minus i, so that an
    exact phrase is one value shared by all lists and a sloppy one a spread of at
    most `slop` between them. With a repeated word, a match must use distinct positions.
    """
    pointers = [0] * len(lists)
    frequency = 0.0
    while True:
        heads = [positions[pointer] for positions, pointer in zip(lists, pointers)]
        low, high = min(heads), max(heads)
        if high - low <= slop and (not repeats or len({head + i for i, head in enumerate(heads)}) == len(heads)):
            frequency += 1.0 / (1 + high - low)
        lowest = heads.index(low)
        pointers[lowest] += 1
        if pointers[lowest] == len(lists[lowest]):
            return frequency


class _TextIndex:
    """An inverted index of a dataset's documents for one field selection, with BM25 statistics.

    It is rebuilt after every change of the dataset, so it keeps what is cheap to
    build: which documents hold each token, and each document's tokens per field
    (term frequencies and positions are read from those for the documents a query reaches).
    """

    def __init__(self, docs: list[dict], field: Optional[str]) -> None:
        self.ids = [doc["id"] for doc in docs]
        self.segments: list[list[list[str]]] = []  # per document, the tokens of each field (or chat message)
        self.lengths: list[int] = []
        postings: dict[str, list[int]] = defaultdict(list)
        for number, doc in enumerate(docs):
            fields = doc.get("fields") or {}
            values = [fields.get(field)] if field else list(fields.values())
            segments = [_tokens(text) for value in values for text in _segments(value)]
            self.segments.append(segments)
            self.lengths.append(sum(map(len, segments)))
            for token in {token for tokens in segments for token in tokens}:
                postings[token].append(number)
        self.postings = dict(postings)
        self.count = max(len(docs), 1)
        self.average_length = (sum(self.lengths) / self.count) or 1.0
        self.sorted_vocabulary: Optional[list[str]] = None  # for prefixes and fuzzy words, sorted when first asked
        self.expansions: dict[tuple[str, int], list[tuple[str, float]]] = {}
        self.codes: Optional[tuple[np.ndarray, np.ndarray]] = None

    def search(self, query: Any) -> dict[str, float]:
        """Each matching document's id and BM25 score."""
        return {self.ids[number]: score for number, score in self._run(query).items()}

    @property
    def vocabulary(self) -> list[str]:
        if self.sorted_vocabulary is None:
            self.sorted_vocabulary = sorted(self.postings)
        return self.sorted_vocabulary

    def _idf(self, token: str) -> float:
        df = len(self.postings.get(token, ()))
        return math.log(1 + (self.count - df + 0.5) / (df + 0.5))

    def _bm25(self, idf: float, frequency: float, number: int) -> float:
        norm = frequency + _BM25_K1 * (1 - _BM25_B + _BM25_B * self.lengths[number] / self.average_length)
        return idf * frequency * (_BM25_K1 + 1) / norm

    def _positions(self, number: int, token: str) -> list[int]:
        return [segment * _SEGMENT_GAP + position for segment, tokens in enumerate(self.segments[number])
                for position, found in enumerate(tokens) if found == token]

    def _word(self, token: str, boost: float = 1.0) -> dict[int, float]:
        idf = self._idf(token)
        return {number: boost * self._bm25(idf, sum(tokens.count(token) for tokens in self.segments[number]), number)
                for number in self.postings.get(token, ())}

    def _run(self, query: Any) -> dict[int, float]:
        if isinstance(query, _Word):
            return self._word(query.token)
        if isinstance(query, _Phrase):
            return self._phrase(query)
        if isinstance(query, _Fuzzy):
            hits: dict[int, float] = {}
            for token, boost in self._expand(query.text, query.edits):
                for number, score in self._word(token, boost).items():
                    hits[number] = hits.get(number, 0.0) + score
            return hits
        if isinstance(query, _Prefix):  # a constant score, as Elasticsearch rewrites prefix queries
            start = bisect.bisect_left(self.vocabulary, query.text)
            hits = {}
            for token in itertools.takewhile(lambda t: t.startswith(query.text), self.vocabulary[start:]):
                hits.update(dict.fromkeys(self.postings[token], 1.0))
            return hits
        if isinstance(query, _All):
            return dict.fromkeys(range(len(self.ids)), 1.0)
        return self._bool(query)

    def _bool(self, query: _Bool) -> dict[int, float]:
        """Every MUST clause, at least one SHOULD clause when there is no MUST, no MUST_NOT; scores add up."""
        must = [self._run(inner) for occur, inner in query.clauses if occur == MUST]
        should = [self._run(inner) for occur, inner in query.clauses if occur == SHOULD]
        excluded = set().union(*(self._run(inner) for occur, inner in query.clauses if occur == MUST_NOT))
        if must:
            must.sort(key=len)
            hits = {n: s for n, s in must[0].items() if n not in excluded}
            for part in must[1:]:
                hits = {n: s + part[n] for n, s in hits.items() if n in part}
            for part in should:
                for n in hits.keys() & part.keys():
                    hits[n] += part[n]
            return hits
        hits = {}
        for part in should:
            for n, score in part.items():
                if n not in excluded:
                    hits[n] = hits.get(n, 0.0) + score
        return hits

    def _phrase(self, query: _Phrase) -> dict[int, float]:
        postings = [self.postings.get(token) for token in query.tokens]
        if not all(postings):
            return {}
        candidates = set(min(postings, key=len)).intersection(*postings)
        idf = sum(self._idf(token) for token in query.tokens)
        repeats = len(set(query.tokens)) < len(query.tokens)
        hits = {}
        for number in candidates:
            lists = [[p - i for p in self._positions(number, token)] for i, token in enumerate(query.tokens)]
            frequency = _phrase_frequency(lists, query.slop, repeats)
            if frequency:
                hits[number] = self._bm25(idf, frequency, number)
        return hits

    def _expand(self, text: str, edits: int) -> list[tuple[str, float]]:
        """The index terms a fuzzy term stands for, with Lucene's boosts: the best `fuzzy_max_expansions`."""
        key = (text, edits)
        if key not in self.expansions:
            found = []
            for token, distance in self._within(text, edits):
                boost = 1.0 if distance == 0 else 1.0 - distance / min(len(text), len(token))
                found.append((-boost, token))
            found.sort()
            self.expansions[key] = [(token, max(-negative, 0.0)) for negative, token in found[:_FUZZY_MAX_EXPANSIONS]]
        return self.expansions[key]

    def _within(self, text: str, edits: int) -> list[tuple[str, int]]:
        """The vocabulary's tokens at most `edits` from `text`, with their distance.

        One dynamic programme over all tokens of a fitting length at once (numpy
        arrays of their characters): a fuzzy word against a 30k-token vocabulary
        takes milliseconds instead of a Python loop's half second.
        """
        if self.codes is None:
            width = _CODE_WIDTH
            padded = "".join(token[:width].ljust(width, "\0") for token in self.vocabulary)
            codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).reshape(len(self.vocabulary), width)
            self.codes = (codes, np.array([len(token) for token in self.vocabulary], dtype=np.int64))
        codes, lengths = self.codes
        columns = len(text) + edits
        if columns > codes.shape[1]:  # longer than the stored characters: the plain loop
            found = [(token, _edit_distance(text, token, edits, _FUZZY_TRANSPOSITIONS)) for token in self.vocabulary]
            return [(token, distance) for token, distance in found if distance <= edits]
        rows = np.flatnonzero(np.abs(lengths - len(text)) <= edits)
        if not len(rows):
            return []
        chars = codes[rows, :columns].astype(np.int64)
        wanted = [ord(char) for char in text]
        previous = np.tile(np.arange(columns + 1), (len(rows), 1))
        before = None
        for i, char in enumerate(wanted, 1):
            step = np.minimum(previous[:, 1:] + 1, previous[:, :-1] + (chars != char))
            if _FUZZY_TRANSPOSITIONS and before is not None and columns > 1:
                swapped = (chars[:, :-1] == char) & (chars[:, 1:] == wanted[i - 2])
                step[:, 1:] = np.where(swapped, np.minimum(step[:, 1:], before[:, :-2] + 1), step[:, 1:])
            current = np.empty_like(previous)
            current[:, 0] = i
            for j in range(1, columns + 1):
                current[:, j] = np.minimum(step[:, j - 1], current[:, j - 1] + 1)
            before, previous = previous, current
        distances = previous[np.arange(len(rows)), lengths[rows]]
        return [(self.vocabulary[row], int(distance)) for row, distance in zip(rows, distances) if distance <= edits]


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
            settings_ids = conn.execute("SELECT DISTINCT settings_id FROM vectors WHERE dataset_id = ?",
                                        (dataset_id,)).fetchall()
            # No deletions recorded: the dataset's settings go with it, nobody asks for their matrices again.
            conn.execute("DELETE FROM vectors WHERE dataset_id = ?", (dataset_id,))
            self.store.bump([dataset_id])
            self.store.cache.pop(dataset_id, None)
            for (settings_id,) in settings_ids:
                self.store.matrices.pop(settings_id, None)

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
                vector_rows.append((record_id, str(vector.vector_settings_id), dataset_id, _vector_blob(vector.value)))
        if not rows:
            return
        with self.store.lock, self.store.transaction() as conn:
            conn.executemany(
                "INSERT INTO records (record_id, dataset_id, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (record_id) DO UPDATE SET doc = excluded.doc, dataset_id = excluded.dataset_id",
                rows,
            )
            before = _vector_keys(conn, record_ids)
            if before or vector_rows:
                rev = _next_vector_rev(conn)
                _delete_vectors(conn, before - {(row[0], row[1]) for row in vector_rows}, rev)
                conn.executemany(
                    "INSERT INTO vectors (record_id, settings_id, dataset_id, value, rev) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (record_id, settings_id) DO UPDATE SET "
                    "dataset_id = excluded.dataset_id, value = excluded.value, rev = excluded.rev",
                    [(*row, rev) for row in vector_rows],
                )
            self.store.bump([dataset_id])

    async def partial_record_update(self, record: Record, **update):
        values = json.loads(_dumps(update))
        self.store.update_doc(str(record.id), lambda doc: doc.update(values))

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]):
        ids = [str(record.id) for record in records]
        with self.store.lock, self.store.transaction() as conn:
            conn.executemany("DELETE FROM records WHERE record_id = ?", [(record_id,) for record_id in ids])
            vectors = _vector_keys(conn, ids)
            if vectors:
                _delete_vectors(conn, vectors, _next_vector_rev(conn))
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
        tree = _parse_query(text.q)
        if tree is None:
            return []
        index = self.store.view(dataset_id, ("text", text.field), lambda all_docs: _TextIndex(all_docs, text.field))
        hits = index.search(tree)
        return [(doc, hits[doc["id"]]) for doc in docs if doc["id"] in hits]

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
        index = self.store.vector_index(str(vector_settings.id), int(vector_settings.dimensions))
        excluded = None
        if not value:
            excluded = str(record.id)
            value = index.vector(excluded) or record.vector_value_by_vector_settings(vector_settings)
        if not value:
            raise ValueError("Cannot find a vector value to apply with provided info")
        sign = -1.0 if order == SimilarityOrder.least_similar else 1.0
        # Records and their vectors change in the same transactions: without a query or a
        # filter every row of the matrix is a candidate, and the documents need not be read.
        candidates = None
        if query is not None or filter is not None:
            candidates = [doc["id"] for doc, _ in self._select(dataset, query, filter)]
        hits = index.search(value, candidates, excluded, sign, threshold, max_results)
        return SearchResponses(
            items=[SearchResponseItem(record_id=UUID(record_id), score=score) for score, record_id in hits],
            total=len(hits),
        )

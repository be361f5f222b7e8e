"""Embeddings, computed once: a content-addressed cache shared by every step that embeds.

Dedup, check-labels, select and review push embed the same texts; on 2,000 rows that
was most of the curation time. Every vector is kept on disk, keyed by the embedder's
identity and a hash of the text, so a text is encoded once per embedder, whichever
step, process or run asks first.

* Identity: the resolved model folder plus a fingerprint of its files (content of the
  small ones, size and mtime of the large ones), so a changed model never reuses old
  vectors; each identity gets its own SQLite file under
  `curate.models.cache_dir() / "embeddings"` (or `$SMALLSET_EMBED_CACHE`; `off` disables).
* Safety: SQLite in WAL mode. Two processes may read and write at once (writers queue on
  SQLite's lock), and a process killed mid-write leaves the last committed state: vectors are
  committed in chunks as they are encoded, so a killed run keeps what it finished.
* Speed: unique texts are looked up in chunked `IN` queries and stored with `executemany`;
  only the missing ones reach the encoder, which is loaded lazily and once per process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from curate.executor import current as current_executor
from curate.library_log import to_log_file
from curate.manifest import content_hash
from curate.models import DEFAULT_EMBEDDER_NAME, ResolvedModel, cache_dir, is_static_model, resolve_embedder

CACHE_ENV = "SMALLSET_EMBED_CACHE"
"""A folder to keep the cache in instead of the smallset cache, or `off` to embed without one."""

FORMAT_VERSION = 1
"""Bumped when what is stored changes (normalization, dtype): old files are then not reused."""

_SMALL_FILE = 1 << 20  # files up to this size are fingerprinted by content, larger ones by size and mtime
_LOOKUP_CHUNK = 500  # keys per `IN (...)` query: under every SQLite build's variable limit
_BUSY_TIMEOUT_S = 120.0  # how long a writer waits for another process's transaction


@dataclass
class EmbedStats:
    """What one `embed` call did: how many texts the cache answered and how many were encoded."""

    texts: int = 0
    unique: int = 0
    """Distinct texts among `texts` (each is looked up and encoded at most once)."""
    hits: int = 0
    """Distinct texts read from the cache."""
    misses: int = 0
    """Distinct texts encoded (and stored, when the cache is on)."""
    loaded_encoder: bool = False
    """Whether this call had to load the encoder (False when it was already loaded or not needed)."""
    cache: str | None = None
    """The cache file, or None when the cache is off or unusable."""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    """Cache problems worked around (the vectors are then computed, never guessed)."""

    def describe(self) -> dict:
        return asdict(self)


last_stats = EmbedStats()
"""Statistics of the latest `embed` call in this process."""

_encoders: dict[tuple[str, str], object] = {}
_encoders_lock = threading.Lock()
_fingerprints: dict[tuple, str] = {}


def embed(texts: list[str], model: str | None = None, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text; cached texts are not encoded again."""
    return embed_with_stats(texts, model, batch_size, progress)[0]


def embed_with_stats(
    texts: list[str], model: str | None = None, batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, EmbedStats]:
    """`embed`, plus what the cache did (also left in `last_stats`)."""
    global last_stats
    t0 = time.perf_counter()
    resolved = resolve_embedder(model)
    identity = embedder_identity(resolved)
    stats = EmbedStats(texts=len(texts))
    last_stats = stats

    keys, index = [], {}  # distinct text -> position in `keys`
    positions = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        slot = index.get(text)
        if slot is None:
            slot = index[text] = len(keys)
            keys.append(text)
        positions[i] = slot
    stats.unique = len(keys)
    hashes = [text_key(t) for t in keys]

    store = _open_store(resolved, identity, stats)
    try:
        found = store.lookup(hashes, stats) if store is not None and hashes else {}
        missing = [k for k, h in enumerate(hashes) if h not in found]
        stats.hits, stats.misses = len(keys) - len(missing), len(missing)
        executor = current_executor()
        if missing and executor.name != "local":
            encode = functools.partial(executor.encode, model, batch_size=batch_size)
            dim = store.dim if store is not None and found else None
        else:
            encoder = _encoder(resolved, identity, stats) if missing or not found else None  # no texts: still a shape
            encode = functools.partial(_encode_chunks, encoder, batch_size=batch_size)
            dim = _dimension(encoder) if encoder is not None else store.dim
        unique_vectors = _Vectors(len(keys), dim)
        for k, h in enumerate(hashes):
            if h in found:
                unique_vectors.put([k], found[h][None, :])
        if missing:
            _encode_missing(encode, keys, hashes, missing, unique_vectors, store, batch_size, progress, stats)
    finally:
        if store is not None:
            store.close()
    stats.seconds = round(time.perf_counter() - t0, 3)
    return np.ascontiguousarray(unique_vectors.array[positions], dtype=np.float32), stats


class _Vectors:
    """The unique texts' vectors, allocated when their dimension is known (a remote encoder tells it first)."""

    def __init__(self, rows: int, dim: int | None) -> None:
        self.rows = rows
        self.array = np.empty((rows, dim), dtype=np.float32) if dim is not None else None

    def put(self, where: list[int], vectors: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.rows, vectors.shape[1]), dtype=np.float32)
        self.array[where] = vectors


def encode_locally(model: str | None, chunks: list[list[str]], batch_size: int) -> Iterator[np.ndarray]:
    """Vectors per chunk with this process's encoder (what an executor's worker runs)."""
    resolved = resolve_embedder(model)
    encoder = _encoder(resolved, embedder_identity(resolved), EmbedStats())
    return _encode_chunks(encoder, chunks, batch_size=batch_size)


def _encode_chunks(encoder, chunks: list[list[str]], batch_size: int) -> Iterator[np.ndarray]:
    for texts in chunks:
        vectors = encoder.encode(texts, batch_size=batch_size, show_progress_bar=False,
                                 convert_to_numpy=True, normalize_embeddings=True)
        yield np.asarray(vectors, dtype=np.float32)


def text_key(text: str) -> bytes:
    """blake2b-16 of the UTF-8 text: the text's address in the cache."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def embedder_identity(resolved: ResolvedModel) -> str:
    """The resolved folder and a fingerprint of its files: what decides whether vectors can be reused."""
    folder = Path(resolved.path)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts)
    stats = tuple((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    memo_key = (str(folder), stats)
    if memo_key not in _fingerprints:
        files_hash = content_hash(folder, skip=lambda rel: ".git" in rel.parts, stat_above=_SMALL_FILE)
        _fingerprints[memo_key] = json.dumps(
            {"path": str(folder), "files": files_hash, "format": FORMAT_VERSION}, sort_keys=True
        )
    return _fingerprints[memo_key]


def cache_folder() -> Path | None:
    """Where the cache files live; None when `$SMALLSET_EMBED_CACHE` is `off`."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else cache_dir() / "embeddings"


def cache_file(resolved: ResolvedModel, identity: str | None = None) -> Path | None:
    """The SQLite file that holds this embedder's vectors (None when the cache is off)."""
    folder = cache_folder()
    if folder is None:
        return None
    identity = identity or embedder_identity(resolved)
    tag = hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()
    label = DEFAULT_EMBEDDER_NAME if resolved.source.startswith("default:") else Path(resolved.path).name
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
    return folder / f"{name}-{tag}.sqlite"


class _Store:
    """One embedder's vectors in one SQLite file (WAL mode: concurrent readers and writers)."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            self._open(identity)
        except BaseException:
            self.conn.close()
            raise

    def _open(self, identity: str) -> None:
        self._retry(lambda: self.conn.execute("PRAGMA journal_mode=WAL").fetchone())
        self.conn.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: never corrupt, durable across a process kill
        self._retry(self._create)
        row = self._meta("identity")
        if row is None:
            with self._transaction():
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('identity', ?)", (identity,))
            row = self._meta("identity")
        if row != identity:
            raise sqlite3.DatabaseError(f"it belongs to another embedder ({row})")
        dim = self._meta("dim")
        self.dim = int(dim) if dim else None

    def _meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _create(self) -> None:
        with self._transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            # A rowid table: vectors (1.5 kB) are too big for WITHOUT ROWID, which was 4x slower to fill.
            self.conn.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock with a second writer
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _retry(self, step, attempts: int = 20):
        """Run `step`, waiting out the rare 'locked' that SQLite returns without its busy handler (WAL setup)."""
        for attempt in range(attempts):
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def lookup(self, hashes: list[bytes], stats: EmbedStats) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        if self.dim is None:
            return found
        width = self.dim * 4
        bad = 0
        for start in range(0, len(hashes), _LOOKUP_CHUNK):
            chunk = hashes[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, blob in self.conn.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk):
                if len(blob) == width:
                    found[bytes(key)] = np.frombuffer(blob, dtype=np.float32)
                else:
                    bad += 1  # not what this file should hold: encode it again
        if bad:
            stats.errors.append(f"{bad} cached vector(s) of the wrong size in {self.path} were encoded again")
        return found

    def put(self, hashes: list[bytes], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = [(h, vectors[i].tobytes()) for i, h in enumerate(hashes)]
        with self._transaction():
            if self.dim is None:
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('dim', ?)", (str(vectors.shape[1]),))
                self.dim = int(self._meta("dim"))
            if self.dim != vectors.shape[1]:
                raise sqlite3.DatabaseError(f"it holds {self.dim}-dimensional vectors, the encoder gives {vectors.shape[1]}")
            self.conn.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?)", rows)

    def close(self) -> None:
        self.conn.close()


def _open_store(resolved: ResolvedModel, identity: str, stats: EmbedStats) -> _Store | None:
    path = cache_file(resolved, identity)
    if path is None:
        return None
    try:
        store = _Store(path, identity)
    except (sqlite3.Error, OSError) as exc:
        _cache_problem(stats, f"embedding cache {path} is unusable ({exc}); embedding without it "
                              f"(delete the file to rebuild it, or set {CACHE_ENV}=off)")
        return None
    stats.cache = str(path)
    return store


def _encode_missing(encode, keys, hashes, missing, out: _Vectors, store, batch_size, progress, stats) -> None:
    """Encode the missing texts, longest first in chunks, committing each chunk to the cache as it is done.

    `encode(chunks)` yields each chunk's vectors in order: this process's encoder, or the
    executor's workers (the chunks, hence the batches and their padding, are the same either way).
    """
    order = sorted(missing, key=lambda k: -len(keys[k]))  # like lengths share a batch: less padding
    chunk_size = max(batch_size * 4, 128)  # a kill loses at most one chunk; a commit costs milliseconds
    chunks = [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="embedding", unit="text", file=sys.stderr)
    try:
        for chunk, vectors in zip(chunks, encode([[keys[k] for k in chunk] for chunk in chunks])):
            out.put(chunk, vectors)
            if store is not None:
                try:
                    store.put([hashes[k] for k in chunk], vectors)
                except sqlite3.Error as exc:
                    _cache_problem(stats, f"could not write to the embedding cache {store.path} ({exc}); "
                                          "the rest is embedded without it")
                    store.close()
                    store = None
                    stats.cache = None
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _encoder(resolved: ResolvedModel, identity: str, stats: EmbedStats):
    """The sentence-transformers model for this embedder, loaded once per process."""
    key = (str(resolved.path), identity)
    with _encoders_lock:
        encoder = _encoders.get(key)
        if encoder is None:
            if is_static_model(resolved.path):
                encoder = _encoders[key] = StaticEncoder(resolved.path)
            else:
                from sentence_transformers import SentenceTransformer

                with to_log_file(f"the embedder {resolved.path}"):  # transformers' loading bar and notices
                    encoder = _encoders[key] = SentenceTransformer(str(resolved.path), device="cpu")
            stats.loaded_encoder = True
    return encoder


class StaticEncoder:
    """A model2vec static model behind sentence-transformers' `encode`: a token lookup and a mean, no
    transformer, so thousands of texts per second on a CPU (the `static` tier)."""

    def __init__(self, folder: Path) -> None:
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(folder))

    def encode(self, texts: list[str], batch_size: int = 64, show_progress_bar: bool = False,
               convert_to_numpy: bool = True, normalize_embeddings: bool = True) -> np.ndarray:
        vectors = np.asarray(self.model.encode(texts, batch_size=max(batch_size, 1024), show_progress_bar=False),
                             dtype=np.float32)
        if normalize_embeddings:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def get_embedding_dimension(self) -> int:
        return int(self.model.dim)


def _dimension(encoder) -> int:
    # sentence-transformers 5 renamed the method; older releases only have the first name
    method = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(method())


def _cache_problem(stats: EmbedStats, message: str) -> None:
    stats.errors.append(message)
    print(f"warning: {message}", file=sys.stderr)

"""The `ray` executor: a step's heavy work as Ray tasks and actors, with the same results as `local`.

What runs where (the README's "Scale-out on Ray" says the same for users):

* Row-local steps (`Step.row_local`, e.g. `filter` and the plugins that declare it): the rows
  are cut into blocks and each block runs the step itself in a Ray Data `map_batches` task;
  the driver concatenates the blocks' kept rows and drops in input order (`Step.combine`).
* Embeddings: an actor pool, one sentence-transformers model per actor, fed the same chunks
  (so the same batches and padding) the local encoder gets; the embedding cache stays on the
  driver. Actors are released after each call, so the next phase gets the CPUs back.
* Exact dedup: map tasks hash every text and route it to one of P partitions; reduce tasks
  group each partition by text and link every row to the first row with that text.
* Near dedup: map tasks compute MinHash signatures and one key per LSH band, routed by key
  to P partitions (the band/bucket shuffle, through Ray's object store); reduce tasks emit
  every pair within a bucket; verification (exact Jaccard of shingle sets) runs in tasks on
  chunks of candidates. The driver holds the candidate codes (8 bytes per pair) and the
  verified pairs.
* Semantic dedup: the embedding actor pool, then the exact search as blocks of rows against
  the rows after them (the vectors are shared once through the object store), or the faiss
  HNSW index built once and searched in partitions.
* On the driver: reading the input, every step's global decision (connected components and
  the keeper per cluster, decontamination's pool statistics, selection, the label checker's
  neighbourhoods), and writing the output, its drops and its manifest.

Tasks are retried by Ray when a worker or node dies (`max_retries`), so a lost node costs
time, not rows; an error in the step's own code is re-raised here as the error it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import polars as pl

from curate.ray_cluster import RayOptions, cluster_cpus, connect

RETRIES = 3
"""Times Ray reruns a task whose worker or node died (Ray's own default for tasks)."""
BLOCK_COLUMN = "__smallset_block"


class RayExecutor:
    """Steps and primitives on a Ray cluster (joined or started by `curate.ray_cluster.connect`)."""

    name: ClassVar[str] = "ray"

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.ray = connect(self.options)
        self.workers = self.options.workers or cluster_cpus(self.ray)
        self._tasks: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"name": self.name, "address": self.options.address, "workers": self.workers, "nodes": len(nodes),
                "cpus": cluster_cpus(self.ray)}

    def close(self) -> None:
        pass  # a local instance ends with the process; a joined cluster is not ours to stop

    def _remote(self, fn, **options: Any):
        """`fn` as a Ray task (made once per executor)."""
        key = f"{fn.__name__}:{sorted(options.items())}"
        if key not in self._tasks:
            self._tasks[key] = self.ray.remote(max_retries=RETRIES, **options)(fn)
        return self._tasks[key]

    def _get(self, refs):
        """`ray.get`, with a step's own error re-raised as itself (Ray wraps it in RayTaskError)."""
        try:
            return self.ray.get(refs)
        except Exception as exc:  # noqa: BLE001 - unwrapped below, or re-raised as it is
            raise _unwrap(exc) from None

    # --- row-local steps -------------------------------------------------------------------------

    def run(self, step, records: pl.DataFrame):
        if not getattr(step, "row_local", False) or records.height < 2:
            return step.run(records)
        import ray.data

        blocks = min(self.workers * 2, records.height)
        size = -(-records.height // blocks)
        tables = [records.slice(start, size).with_columns(pl.lit(start // size, dtype=pl.Int64).alias(BLOCK_COLUMN)).to_arrow()
                  for start in range(0, records.height, size)]
        dataset = ray.data.from_arrow(tables).map_batches(
            _run_block, fn_kwargs={"step": step}, batch_size=None, batch_format="pyarrow")
        try:
            rows = sorted(dataset.take_all(), key=lambda row: row["block"])
        except Exception as exc:  # noqa: BLE001
            raise _unwrap(exc) from None
        return step.combine([_result_from_row(row) for row in rows])

    # --- reading --------------------------------------------------------------------------------

    def read(self, paths, **options):
        """One task per input (a file, a shard folder, a datasets folder), all at once; results in input
        order. Every node must see the paths (a shared file system), as every Ray reader needs."""
        task = self._remote(_read_one)
        refs = [task.remote(str(path), options) for path in paths]
        for ref in refs:
            yield self._get(ref)

    # --- embeddings ------------------------------------------------------------------------------

    def encode(self, spec: str | None, chunks: list[list[str]], batch_size: int) -> Iterator[np.ndarray]:
        from ray.util import ActorPool

        encoder = self.ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)(_Encoder)
        actors = [encoder.remote(spec, batch_size) for _ in range(max(1, min(self.workers, len(chunks))))]
        try:
            pool = ActorPool(actors)
            for vectors in pool.map(lambda actor, texts: actor.encode.remote(texts), chunks):
                yield vectors
        except Exception as exc:  # noqa: BLE001
            raise _unwrap(exc) from None
        finally:
            for actor in actors:
                self.ray.kill(actor)

    # --- dedup pairs -----------------------------------------------------------------------------

    def exact_pairs(self, texts: pl.Series) -> np.ndarray:
        parts = self.workers
        bounds = _even_bounds(len(texts), self.workers * 2)
        route = self._remote(_route_texts, num_returns=parts) if parts > 1 else self._remote(_route_texts)
        pieces = [route.remote(texts.slice(s, e - s), s, parts) for s, e in bounds]
        pieces = [p if parts > 1 else [p] for p in pieces]
        reduce = self._remote(_first_of_text)
        found = self._get([reduce.remote(*[piece[p] for piece in pieces]) for p in range(parts)])
        return np.concatenate(found).astype(np.int64).reshape(-1, 2) if found else np.empty((0, 2), dtype=np.int64)

    def near_pairs(self, texts: list[str], config) -> tuple[np.ndarray, np.ndarray]:
        from curate.dedup.near import _chunks, lsh_params, near_pairs

        if not config.verify:
            return near_pairs(texts, config)  # the estimate needs every signature in one place
        n, parts = len(texts), self.workers
        bands, rows = lsh_params(float(config.threshold), config.num_perm, config.lsh_weights)
        bounds = _chunks(texts, budget=max(1, -(-sum(map(len, texts)) // (self.workers * 4))))
        # The texts go into the object store once, as one UTF-8 buffer and its offsets (zero-copy numpy on every
        # reader): the signing tasks read their range of it and the verification tasks the rows of their pairs,
        # instead of every task carrying its own copy of its texts (verification alone then put each text into the
        # store once per chunk of candidates it appears in: many times the input, spilled to disk at 1M rows).
        shared = self.ray.put(_text_buffer(texts))
        sign = self._remote(_sign_and_route, num_returns=parts) if parts > 1 else self._remote(_sign_and_route)
        pieces = [sign.remote(shared, s, e, config, bands, rows, parts) for s, e in bounds]
        pieces = [p if parts > 1 else [p] for p in pieces]
        bucket = self._remote(_bucket_pairs)
        codes = [bucket.remote(n, *[piece[p] for piece in pieces]) for p in range(parts)]
        del pieces  # each partition's keys are released as soon as its bucket task has run
        codes = self._get(codes)
        codes = np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)
        candidates = np.stack(np.divmod(codes, np.int64(n)), axis=1).astype(np.int64).reshape(-1, 2)
        del codes
        similarity = self._verify(shared, candidates, config)
        keep = similarity >= config.threshold
        return candidates[keep], similarity[keep]

    def _verify(self, shared, pairs: np.ndarray, config) -> np.ndarray:
        """Exact Jaccard of `pairs`, in chunks of candidates; each task takes its texts from `shared`."""
        per_task = min(20_000, max(2_000, -(-len(pairs) // (4 * self.workers))))
        verify = self._remote(_verify_chunk)
        refs = [verify.remote(config, shared, pairs[s : s + per_task]) for s in range(0, len(pairs), per_task)]
        found = self._get(refs)
        return np.concatenate(found) if found else np.empty(0, dtype=np.float64)

    def semantic_pairs(self, vectors: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
        from curate.dedup import semantic

        n = len(vectors)
        if config.uses_index(n):
            import faiss

            index = faiss.serialize_index(semantic.hnsw_index(vectors, config.neighbours))
            index_ref, search = self.ray.put(index), self._remote(_search_index)
            refs = [search.remote(index_ref, vectors[s:e], s, config.threshold, config.neighbours)
                    for s, e in _even_bounds(n, self.workers * 4)]
            found = self._get(refs)
            return semantic.unique_pairs(*(np.concatenate(part) for part in zip(*found)))
        starts = list(range(0, n, semantic.BLOCK))
        lanes = [starts[k :: self.workers * 2] for k in range(min(len(starts), self.workers * 2))]  # round robin: the triangle's rows balance
        vectors_ref, search = self.ray.put(vectors), self._remote(_search_blocks)
        found = self._get([search.remote(vectors_ref, lane, config.threshold) for lane in lanes])
        return semantic._stack(*zip(*found)) if found else semantic._stack([], [], [])


# --- what the tasks and actors run (module level: Ray pickles them by reference) ----------------------


def _run_block(batch, step):
    """One block of a row-local step: its StepResult as one row (kept and drops as Arrow IPC)."""
    import pyarrow as pa

    frame = pl.from_arrow(batch)
    block = int(frame[BLOCK_COLUMN][0])
    try:
        result = step.run(frame.drop(BLOCK_COLUMN))
    except ValueError as exc:  # the input's fault: a result to report, not a task failure to retry
        return pa.table({"block": [block], "kept": [b""], "drops": [b""], "meta": [json.dumps({"error": str(exc)})]})
    meta = {"counts": result.counts, "parameters": result.parameters, "messages": result.messages,
            "warnings": result.warnings, "note": result.note}
    return pa.table({"block": [block], "kept": [_ipc(result.kept)], "drops": [_ipc(result.drops)],
                     "meta": [json.dumps(meta, default=str)]})


def _read_one(path: str, options: dict):
    from curate.readers import read_records

    return read_records(path, **options)


def _ipc(frame: pl.DataFrame) -> bytes:
    return frame.write_ipc(None).getvalue()


def _result_from_row(row: dict):
    from curate.step import StepResult

    meta = json.loads(row["meta"])
    if "error" in meta:
        raise ValueError(meta["error"])
    return StepResult(pl.read_ipc(row["kept"]), pl.read_ipc(row["drops"]), meta["counts"], meta["parameters"],
                      meta["messages"], meta["warnings"], meta["note"])


class _Encoder:
    """An embedding actor: one model, loaded once."""

    def __init__(self, spec: str | None, batch_size: int) -> None:
        from curate.embeddings import encode_locally

        self.batch_size = batch_size
        self._encode = encode_locally
        self.spec = spec

    def encode(self, texts: list[str]) -> np.ndarray:
        return next(self._encode(self.spec, [texts], self.batch_size))


def _route_texts(texts: pl.Series, offset: int, parts: int):
    """(row, text) of a shard, split by the text's hash into `parts` partitions."""
    frame = pl.DataFrame({"i": np.arange(offset, offset + len(texts), dtype=np.int64), "t": texts})
    frame = frame.with_columns((pl.col("t").hash(seed=0) % parts).alias("p"))
    split = [frame.filter(pl.col("p") == p).drop("p") for p in range(parts)]
    return split if parts > 1 else split[0]


def _first_of_text(*pieces: pl.DataFrame) -> np.ndarray:
    """(first, row) for every row whose text an earlier row has (as `curate.dedup.exact.exact_pairs`)."""
    frame = pl.concat(pieces)
    first = frame.group_by("t").agg(pl.col("i").min().alias("first"))
    linked = frame.join(first, on="t").filter(pl.col("i") != pl.col("first"))
    return linked.select("first", "i").to_numpy().astype(np.int64)


def _text_buffer(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`texts` as one UTF-8 buffer (uint8) and offsets (n + 1, int64): text k is buffer[offsets[k]:offsets[k + 1]]."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _texts_at(shared: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> list[str]:
    """The texts of `rows` (row numbers) from a `_text_buffer`, decoded from the buffer in place."""
    buffer, offsets = shared
    rows = np.asarray(rows, dtype=np.int64)
    view = memoryview(buffer)
    return [str(view[s:e], "utf-8", "surrogatepass") for s, e in zip(offsets[rows].tolist(), offsets[rows + 1].tolist())]


def _sign_and_route(shared, start: int, end: int, config, bands: int, rows: int, parts: int):
    """MinHash signatures of rows [start, end), one key per band and live row, split by key into `parts` partitions."""
    from curate.dedup import near

    near._init_worker(config)
    live, keys = near.band_keys(near._sign_task(_texts_at(shared, np.arange(start, end))), bands, rows)
    band = np.repeat(np.arange(bands, dtype=np.int16), len(live))
    row = np.tile(live.astype(np.int64) + start, bands)
    key = keys.ravel()
    target = key % np.uint64(parts)
    split = [(band[target == p], key[target == p], row[target == p]) for p in range(parts)]
    return split if parts > 1 else split[0]


def _bucket_pairs(n: int, *pieces) -> np.ndarray:
    """Every pair of rows that share a (band, key) bucket in this partition, as i * n + j codes."""
    from curate.dedup.near import _run_pairs

    if not pieces:
        return np.empty(0, dtype=np.int64)
    band = np.concatenate([p[0] for p in pieces])
    key = np.concatenate([p[1] for p in pieces])
    row = np.concatenate([p[2] for p in pieces])
    if len(row) < 2:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((key, band))
    same = (band[order][1:] == band[order][:-1]) & (key[order][1:] == key[order][:-1])
    if not same.any():
        return np.empty(0, dtype=np.int64)
    return np.unique(_run_pairs(row[order], same, n))


def _verify_chunk(config, shared, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of a chunk of candidate pairs (rows of the whole input), texts taken from `shared`."""
    from curate.dedup import near

    near._init_worker(config)
    involved, local = np.unique(pairs, return_inverse=True)
    return near._verify_task((_texts_at(shared, involved), local.reshape(-1, 2).astype(np.int64)))


def _search_blocks(vectors: np.ndarray, starts: list[int], threshold: float):
    from curate.dedup.semantic import block_pairs

    found = [block_pairs(vectors, start, threshold) for start in starts]
    return tuple(np.concatenate(part) for part in zip(*found)) if found else (np.empty(0, np.int64),) * 2 + (np.empty(0),)


def _search_index(index_bytes: np.ndarray, queries: np.ndarray, offset: int, threshold: float, k: int):
    import faiss

    from curate.dedup.semantic import hnsw_neighbours

    return hnsw_neighbours(faiss.deserialize_index(index_bytes), queries, offset, threshold, k)


def _even_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    size = max(1, -(-n // max(1, parts)))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _unwrap(exc: BaseException) -> BaseException:
    """The error a step raised inside a task (Ray wraps it, Ray Data wraps it again)."""
    seen = exc
    for _ in range(8):
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            break
        seen = cause
    if seen is exc:
        return exc
    if isinstance(seen, ValueError):
        return ValueError(str(seen).splitlines()[0] if str(seen) else type(seen).__name__)
    return seen

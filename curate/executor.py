"""Where a step's heavy work runs: in this process (`local`, the default) or on a Ray cluster (`ray`).

A step's own code decides *what* is computed; the executor decides *where*. Steps reach it
through a handful of primitives, the parts of curation whose cost grows with the raw pool:

* `run(step, records)`: a step whose class says `row_local = True` (each row's fate depends
  on that row alone, like `filter`) runs on batches of rows in parallel; any other step runs
  here and distributes through the primitives below.
* `encode(spec, chunks, batch_size)`: sentence embeddings of text chunks (the embedding cache,
  which texts are missing and in which chunks, stays in `curate.embeddings`);
* `read(paths, **options)`: `curate ingest`'s inputs, each read by `curate.readers.read_records`
  (one task per input on Ray), results in input order;
* `exact_pairs`, `near_pairs`, `semantic_pairs`: the duplicate pairs of the dedup methods.
  Clustering the pairs and choosing the keeper stay in `curate.dedup`, on the driver, so the
  kept rows, drop reasons and `duplicate_of` are the same whichever executor found the pairs.

The executor in use is a context variable (`using(executor)`, `current()`), set by the command
wrapper, so a step (a plugin's too) calls `curate.embeddings.embed` as always and gets the
cluster when the user asked for one. `local` never imports Ray; `curate.ray_executor` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from pathlib import Path

    from curate.dedup.near import NearDedupConfig
    from curate.dedup.semantic import SemanticDedupConfig
    from curate.ray_cluster import RayOptions
    from curate.readers import ReadResult
    from curate.step import Step, StepResult

EXECUTORS = ("local", "ray")
EXECUTOR_ENV = "SMALLSET_EXECUTOR"


class LocalExecutor:
    """Everything in this process (the near-duplicate search still uses a process pool per core)."""

    name: ClassVar[str] = "local"

    def run(self, step: Step, records: pl.DataFrame) -> StepResult:
        return step.run(records)

    def encode(self, spec: str | None, chunks: list[list[str]], batch_size: int) -> Iterator[np.ndarray]:
        """Unit-length float32 vectors per chunk, chunk by chunk (the caller caches each as it comes)."""
        from curate.embeddings import encode_locally

        return encode_locally(spec, chunks, batch_size)

    def read(self, paths: list[Path], **options: Any) -> Iterator[ReadResult]:
        """Each input read into records, in order (one at a time, as they are asked for)."""
        from curate.readers import read_records

        return (read_records(path, **options) for path in paths)

    def exact_pairs(self, texts: pl.Series) -> np.ndarray:
        from curate.dedup.exact import exact_pairs

        return exact_pairs(texts)

    def near_pairs(self, texts: list[str], config: NearDedupConfig) -> tuple[np.ndarray, np.ndarray]:
        from curate.dedup.near import near_pairs

        return near_pairs(texts, config)

    def semantic_pairs(self, vectors: np.ndarray, config: SemanticDedupConfig) -> tuple[np.ndarray, np.ndarray]:
        from curate.dedup.semantic import semantic_pairs

        return semantic_pairs(vectors, config)

    def describe(self) -> dict[str, Any]:
        """For the manifest (not a parameter: the results do not depend on it)."""
        return {"name": self.name}

    def close(self) -> None:
        pass


LOCAL = LocalExecutor()
_current: ContextVar[Any] = ContextVar("smallset_executor", default=LOCAL)


def current() -> Any:
    """The executor of the command that is running (local unless it asked for another)."""
    return _current.get()


@contextmanager
def using(executor: Any) -> Iterator[Any]:
    """Run the block's steps and primitives on `executor`."""
    token = _current.set(executor)
    try:
        yield executor
    finally:
        _current.reset(token)


def open_executor(name: str = "local", ray: RayOptions | None = None) -> Any:
    """The executor called `name`; `ray` says how to reach the cluster."""
    if name == "local":
        return LOCAL
    if name == "ray":
        from curate.ray_executor import RayExecutor

        return RayExecutor(ray)
    raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")

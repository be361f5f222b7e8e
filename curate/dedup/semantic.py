"""Semantic duplicates: rows whose sentence embeddings are closer than a cosine threshold.

Neighbour search is exact (blocked matrix products) up to `exact_limit` rows: on
CPU that is fast enough and misses nothing. Beyond it, a faiss HNSW index keeps
the search near-linear; faiss is the library most practitioners already run for
this, and HNSW needs no training pass, unlike IVF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from curate.embeddings import embed  # re-exported: embedding lives in curate.embeddings (cached)


@dataclass
class SemanticDedupConfig:
    """Semantic dedup parameters."""

    threshold: float = 0.95
    """Cosine similarity at or above which two rows are duplicates. 0.95 catches paraphrases
    that differ in a few words; lower values start merging rows that merely share a topic."""
    model: str | None = None
    """Embedder spec (None: the packaged all-MiniLM-L6-v2)."""
    batch_size: int = 64
    index: Literal["auto", "exact", "faiss"] = "auto"
    exact_limit: int = 50_000
    """With index="auto", rows up to which the search is exact."""
    neighbours: int = 16
    """Neighbours looked at per row by the HNSW index."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"semantic threshold must be in (0, 1], got {self.threshold}")

    def uses_index(self, rows: int) -> bool:
        """Whether `rows` vectors are searched with the HNSW index (else exactly)."""
        return self.index == "faiss" or (self.index == "auto" and rows > self.exact_limit)


def semantic_pairs(vectors: np.ndarray, config: SemanticDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (k, 2) with i < j, cosine (k,)) for every pair at or above the threshold."""
    if config.uses_index(len(vectors)):
        return _hnsw_pairs(vectors, config.threshold, config.neighbours)
    return _exact_pairs(vectors, config.threshold)


BLOCK = 512
"""Rows per block of the exact search (one matrix product of BLOCK x the rows after them)."""


def _exact_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    found = [block_pairs(vectors, start, threshold) for start in range(0, len(vectors), BLOCK)]
    return _stack(*zip(*found)) if found else _stack([], [], [])


def block_pairs(vectors: np.ndarray, start: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of the pairs i < j with i in rows [start, start + BLOCK) (only j > i: the upper triangle)."""
    sims = vectors[start : start + BLOCK] @ vectors[start:].T
    rows, cols = np.nonzero(sims >= threshold)
    upper = cols > rows  # both counted from `start`
    return rows[upper] + start, cols[upper] + start, sims[rows[upper], cols[upper]]


def hnsw_index(vectors: np.ndarray, k: int):
    """A faiss HNSW index of `vectors` (inner product) set up to search `k` neighbours."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    index.add(vectors)
    index.hnsw.efSearch = max(64, 2 * k)
    return index


def hnsw_neighbours(index, queries: np.ndarray, offset: int, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) with i < j for the neighbours at or above `threshold` of rows offset.. (the queries)."""
    sims, neighbours = index.search(queries, k + 1)
    rows = np.repeat(np.arange(len(queries)) + offset, neighbours.shape[1])
    cols, sims = neighbours.ravel(), sims.ravel()
    keep = (cols >= 0) & (sims >= threshold) & (cols != rows)
    return np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep]), sims[keep]


def unique_pairs(i: np.ndarray, j: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair once (a pair is found from both of its rows), sorted."""
    pairs, first = np.unique(np.stack([i, j], axis=1).reshape(-1, 2), axis=0, return_index=True)
    return pairs.astype(np.int64), sims[first].astype(np.float64)


def _hnsw_pairs(vectors: np.ndarray, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    return unique_pairs(*hnsw_neighbours(hnsw_index(vectors, k), vectors, 0, threshold, k))


def _stack(i, j, s) -> tuple[np.ndarray, np.ndarray]:
    if not i:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    return np.stack([np.concatenate(i), np.concatenate(j)], axis=1).astype(np.int64), np.concatenate(s).astype(np.float64)

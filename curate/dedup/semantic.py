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


def semantic_pairs(vectors: np.ndarray, config: SemanticDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (k, 2) with i < j, cosine (k,)) for every pair at or above the threshold."""
    use_faiss = config.index == "faiss" or (config.index == "auto" and len(vectors) > config.exact_limit)
    if use_faiss:
        return _hnsw_pairs(vectors, config.threshold, config.neighbours)
    return _exact_pairs(vectors, config.threshold)


def _exact_pairs(vectors: np.ndarray, threshold: float, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    n = len(vectors)
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors[start:].T  # only j >= start: the upper triangle
        rows, cols = np.nonzero(sims >= threshold)
        cols = cols + start
        rows_abs = rows + start
        upper = cols > rows_abs
        found_i.append(rows_abs[upper])
        found_j.append(cols[upper])
        found_s.append(sims[rows[upper], cols[upper] - start])
    return _stack(found_i, found_j, found_s)


def _hnsw_pairs(vectors: np.ndarray, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    index.add(vectors)
    index.hnsw.efSearch = max(64, 2 * k)
    sims, neighbours = index.search(vectors, k + 1)
    rows = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
    cols, sims = neighbours.ravel(), sims.ravel()
    keep = (cols >= 0) & (sims >= threshold) & (cols != rows)
    i, j = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    pairs, first = np.unique(np.stack([i, j], axis=1), axis=0, return_index=True)
    return pairs.astype(np.int64), sims[keep][first].astype(np.float64)


def _stack(i: list, j: list, s: list) -> tuple[np.ndarray, np.ndarray]:
    if not i:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    return np.stack([np.concatenate(i), np.concatenate(j)], axis=1).astype(np.int64), np.concatenate(s).astype(np.float64)

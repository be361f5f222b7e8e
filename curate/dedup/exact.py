"""Exact duplicates: rows whose normalized text (NFKC, lower case, whitespace) is identical."""

from __future__ import annotations

import numpy as np
import polars as pl


def exact_pairs(texts: pl.Series) -> np.ndarray:
    """(k, 2) pairs linking every row to the first row with the same text."""
    frame = pl.DataFrame({"t": texts}).with_row_index("i")
    first = frame.group_by("t", maintain_order=True).agg(pl.col("i").first().alias("first"))
    linked = frame.join(first, on="t").filter(pl.col("i") != pl.col("first"))
    return linked.select("first", "i").to_numpy().astype(np.int64)

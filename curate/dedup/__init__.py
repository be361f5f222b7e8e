"""Dedup: exact, near (MinHash LSH) and semantic (embeddings) duplicates, alone or chained.

One module per method (`exact`, `near`, `semantic`), `clusters` for keeping one row
per duplicate cluster, and `pipeline` that chains them. The heavy parts (datasketch,
scipy, sentence-transformers) load on first use, so that CLIs start fast.
"""

METHODS = ("exact", "near", "semantic")

_PIPELINE = {"DedupConfig", "DedupResult", "NearDedupConfig", "SemanticDedupConfig", "dedup", "CLUSTER_SIZE_COLUMN"}


def __getattr__(name: str):
    if name in _PIPELINE:
        from curate.dedup import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'curate.dedup' has no attribute {name!r}")

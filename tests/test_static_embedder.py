"""The static embedding tier (`--embedder static`): a model2vec model distilled once from the packaged MiniLM.

Real text (docstrings, tests/corpus.py) with planted copies; the distillation really runs (once per
cache, about 100 s on 2 cores) and the semantic dedup it drives is compared with the MiniLM tier's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl

from corpus import docstring_corpus

CURATE = str(Path(sys.executable).parent / "curate")


def _curate(*args) -> None:
    proc = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "SMALLSET_EMBED_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr


def test_static_tier_finds_what_the_minilm_tier_finds(tmp_path):
    rng = random.Random(2)
    rows = [{"prompt": r["text"], "completion": r["label"]} for r in docstring_corpus()]
    rows += [dict(r) for r in rng.sample(rows, 40)]  # planted exact copies
    rng.shuffle(rows)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _curate("ingest", tmp_path / "rows.jsonl", "-o", tmp_path / "rows.parquet")
    for tier, spec in (("minilm", []), ("static", ["--embedder", "static"])):
        _curate("dedup", tmp_path / "rows.parquet", "--method", "semantic", "--semantic-threshold", "0.9", *spec,
                "-o", tmp_path / f"{tier}.parquet")
    minilm, static = (set(pl.read_parquet(tmp_path / f"{t}.parquet.drops.parquet")["id"]) for t in ("minilm", "static"))
    assert len(minilm) >= 40 and len(minilm & static) / len(minilm) >= 0.9  # measured 0.949 on this corpus
    manifest = json.loads((tmp_path / "static.parquet.manifest.json").read_text())
    (model,) = manifest["models"]
    assert model["source"].startswith("static:") and (Path(model["path"]) / "smallset-conversion.json").is_file()
    assert (Path(model["path"]) / "config.json").read_text().count("model2vec") == 1

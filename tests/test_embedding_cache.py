"""The embedding cache: encode each text once per embedder, stay correct under two writers and a kill -9.

Real embedder (the packaged all-MiniLM-L6-v2), real SQLite files in a temporary cache
folder, real child processes; every cached result is checked against a cache-off run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from curate import embeddings
from curate.embeddings import CACHE_ENV, cache_file, embed, embed_with_stats
from curate.models import resolve_embedder
from corpus import docstring_corpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [row["text"] for row in docstring_corpus()]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "embed-cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def uncached(texts: list[str], model: str | None = None) -> np.ndarray:
    """The reference: the same texts embedded with the cache off."""
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = "off"
    try:
        vectors, stats = embed_with_stats(texts, model, progress=False)
    finally:
        if old is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = old
    assert stats.cache is None and stats.misses == len(set(texts))
    return vectors


def stored_rows(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    finally:
        conn.close()


def test_second_call_encodes_nothing_and_new_texts_only(cache, texts):
    first, s1 = embed_with_stats(texts[:60], progress=False)
    assert (s1.hits, s1.misses) == (0, 60)
    assert first.dtype == np.float32 and first.shape == (60, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    again, s2 = embed_with_stats(texts[:60], progress=False)
    assert (s2.hits, s2.misses, s2.loaded_encoder) == (60, 0, False)
    assert np.array_equal(first, again)

    half_new = texts[30:90]  # 30 cached, 30 new
    mixed, s3 = embed_with_stats(half_new, progress=False)
    assert (s3.hits, s3.misses, s3.loaded_encoder) == (30, 30, False)
    assert embeddings.last_stats is s3
    np.testing.assert_allclose(mixed, uncached(half_new), atol=1e-5)
    assert stored_rows(Path(s3.cache)) == 90

    # Repeated texts are looked up and encoded once, and come back in the caller's order.
    repeated = [texts[200], texts[0], texts[200], texts[201]]
    vectors, s4 = embed_with_stats(repeated, progress=False)
    assert (s4.unique, s4.hits, s4.misses) == (3, 1, 2)
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[1], first[0])
    np.testing.assert_allclose(vectors, uncached(repeated), atol=1e-5)


def test_the_old_import_is_the_cached_embed():
    from curate.dedup.semantic import embed as old_name

    assert old_name is embed


def test_cache_off_writes_nothing(tmp_path, monkeypatch, texts):
    monkeypatch.setenv("SMALLSET_CACHE", str(tmp_path / "smallset"))
    monkeypatch.setenv(CACHE_ENV, "off")
    _, stats = embed_with_stats(texts[:10], progress=False)
    assert stats.cache is None and stats.misses == 10
    assert not (tmp_path / "smallset").exists()


def test_default_location_is_under_the_smallset_cache(tmp_path, monkeypatch, texts):
    monkeypatch.setenv("SMALLSET_CACHE", str(tmp_path / "smallset"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    _, stats = embed_with_stats(texts[:5], progress=False)
    assert Path(stats.cache).parent == tmp_path / "smallset" / "embeddings"


def test_an_unreadable_cache_file_is_worked_around(cache, texts, capsys):
    path = cache_file(resolve_embedder(None))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    vectors, stats = embed_with_stats(texts[:20], progress=False)
    assert stats.cache is None and stats.misses == 20 and stats.errors
    assert str(path) in capsys.readouterr().err
    np.testing.assert_allclose(vectors, uncached(texts[:20]), atol=1e-5)


CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import sentence_transformers  # the heavy import before the start line, so both children embed at once
from curate.embeddings import embed_with_stats
texts = json.loads(Path(sys.argv[1]).read_text())
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
vectors, stats = embed_with_stats(texts, batch_size=int(sys.argv[4]), progress=False)
np.save(sys.argv[2], vectors)
print(json.dumps(stats.describe()))
"""


def _child(tmp_path: Path, name: str, texts: list[str], go: Path, batch_size: int = 16) -> tuple[subprocess.Popen, Path]:
    inp, out = tmp_path / f"{name}.json", tmp_path / f"{name}.npy"
    inp.write_text(json.dumps(texts))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(inp), str(out), str(go), str(batch_size)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    return proc, out


def test_two_processes_write_overlapping_texts_at_once(cache, tmp_path, texts):
    a, b = texts[:120], texts[60:180]  # 60 texts in common
    go = tmp_path / "go"
    procs = [_child(tmp_path, "a", a, go), _child(tmp_path, "b", b, go)]
    go.touch()
    results = []
    for proc, out in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results.append((json.loads(stdout.strip().splitlines()[-1]), np.load(out)))
    (stats_a, va), (stats_b, vb) = results
    assert not stats_a["errors"] and not stats_b["errors"]
    reference = uncached(texts[:180])
    np.testing.assert_allclose(va, reference[:120], atol=1e-5)
    np.testing.assert_allclose(vb, reference[60:], atol=1e-5)
    # Everything both wrote is there once, and a third reader gets it all from the cache.
    assert stored_rows(Path(stats_a["cache"])) == 180
    everything, stats = embed_with_stats(texts[:180], progress=False)
    assert (stats.hits, stats.misses) == (180, 0)
    np.testing.assert_allclose(everything, reference, atol=1e-5)


def test_a_process_killed_while_writing_leaves_a_usable_cache(cache, tmp_path, texts):
    many = [f"{t} (variant {k})" for k in range(2) for t in texts][:600]
    go = tmp_path / "go"
    go.touch()
    proc, _ = _child(tmp_path, "killed", many, go, batch_size=8)  # chunks of 128 texts, committed one by one
    path = cache_file(resolve_embedder(None))
    deadline = time.monotonic() + 240
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            try:
                seen = stored_rows(path)
            except sqlite3.OperationalError:  # the child is still creating the tables
                seen = 0
            if seen:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"the child finished before it could be killed: {proc.communicate()[1]}"
    assert 0 < seen < len(many)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path, timeout=30)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    vectors, stats = embed_with_stats(many, progress=False)
    assert stats.hits >= seen and stats.misses > 0 and stats.hits + stats.misses == len(many)
    assert not stats.errors
    assert stored_rows(path) == len(many)
    sample = np.arange(0, len(many), 7)  # cached before the kill and encoded after it, alike
    np.testing.assert_allclose(vectors[sample], uncached([many[i] for i in sample]), atol=1e-5)


def test_a_different_embedder_does_not_share_vectors(cache, tmp_path, texts):
    sample = texts[:40]
    original, s0 = embed_with_stats(sample, progress=False)
    assert s0.misses == 40

    copy = tmp_path / "minilm-copy"
    shutil.copytree(resolve_embedder(None).path, copy)
    same_weights, s1 = embed_with_stats(sample, str(copy), progress=False)
    assert (s1.hits, s1.misses) == (0, 40) and s1.cache != s0.cache
    np.testing.assert_allclose(same_weights, original, atol=1e-5)

    pooling = copy / "1_Pooling" / "config.json"  # the copy now pools the CLS token instead of the mean
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config))
    changed, s2 = embed_with_stats(sample, str(copy), progress=False)
    assert (s2.hits, s2.misses, s2.loaded_encoder) == (0, 40, True) and s2.cache not in (s0.cache, s1.cache)
    assert not np.allclose(changed, original, atol=1e-3)
    np.testing.assert_allclose(changed, uncached(sample, str(copy)), atol=1e-5)

    back, s3 = embed_with_stats(sample, progress=False)  # the original's vectors are untouched
    assert (s3.hits, s3.misses) == (40, 0) and np.array_equal(back, original)


def test_a_curation_chain_embeds_each_text_once(cache, texts):
    """dedup -> check-labels -> select on classification rows: select finds every vector in the cache
    (it embeds the prompt turns, as check-labels does), and a rerun of the chain encodes nothing."""
    import polars as pl

    from curate.dedup.pipeline import DedupConfig, dedup
    from curate.label_check import check_labels
    from curate.records import with_ids
    from curate.select import SelectConfig, select

    rows = docstring_corpus()[:150]
    df = with_ids(pl.DataFrame({
        "messages": [[{"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}] for r in rows],
        "label": [r["label"] for r in rows], "source": ["docs"] * len(rows), "meta": ["{}"] * len(rows),
    }))
    for rerun in (False, True):
        kept = dedup(df, DedupConfig(methods=("semantic",)), progress=False).kept
        assert embeddings.last_stats.misses == (0 if rerun else df.height)
        checked = check_labels(kept, progress=False).kept
        assert embeddings.last_stats.misses == 0  # dedup embedded the same prompt text (fields auto: the input)
        select(checked, SelectConfig(size=50), progress=False)
        assert (embeddings.last_stats.hits, embeddings.last_stats.misses) == (checked.height, 0)

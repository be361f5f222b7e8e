"""curate decontaminate on real text: near-copies of test rows go, rows that only share stock phrases stay.

The corpus is real (standard-library and numpy docstrings, tests/corpus.py), split into
a pool and a test set. Every test row and every other pool row is wrapped in the same
templated greeting and signature (39 words), as help-desk answers are; into the pool go
near-copies of the long test rows (22 words or more, so that a changed word leaves at least
half of a row's 8-grams: a near-copy by the n-gram measure itself), one or two words changed. A run on the bare texts
(no template anywhere) says which pool rows overlap a test row on their own content:
those, and the planted copies, are the only rows decontamination may drop.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import polars as pl
import pytest

from conftest import run_curate, run_curate_many, write_jsonl
from corpus import docstring_corpus
from curate.drops import read_drops
from curate.manifest import read_manifest

GREETING = "Hello, and thank you for contacting the documentation help desk about your question today. Here is the answer:"
SIGNATURE = ("If you have any further questions, please do not hesitate to reply to this message. "
             "Kind regards, the documentation support team.")
REPLACEMENTS = ("various", "several", "given", "specified", "new")
TEST_ROWS = 100
LONG = 22  # words


def _wrap(text: str) -> str:
    return f"{GREETING} {text} {SIGNATURE}"


def _near_copy(text: str, rng: random.Random) -> str:
    """`text` with one word changed (two in texts of 40 words or more)."""
    words = text.split()
    for position in rng.sample(range(len(words)), 1 + (len(words) >= 40)):
        words[position] = rng.choice([w for w in REPLACEMENTS if w != words[position].lower()])
    return " ".join(words)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("decontaminate")
    rows = docstring_corpus()
    rng = random.Random(0)
    order = list(range(len(rows)))
    rng.shuffle(order)
    test, rest = [rows[i] for i in order[:TEST_ROWS]], [rows[i] for i in order[TEST_ROWS:]]
    sources = [k for k, row in enumerate(test) if len(row["text"].split()) >= LONG]
    assert len(sources) >= 5  # the corpus has enough long rows to copy

    # kind, index of the copied test row (copies only), bare text, text as it goes into the pool
    pool = [("boilerplate" if i % 2 == 0 else "plain", None, row, _wrap(row["text"]) if i % 2 == 0 else row["text"])
            for i, row in enumerate(rest)]
    for n, k in enumerate(sources):
        body = {**test[k], "text": _near_copy(test[k]["text"], rng)}
        pool.append(("copy", k, body, _wrap(body["text"]) if n % 2 == 0 else body["text"]))  # half keep the template

    write_jsonl(tmp / "pool.jsonl", [{"text": text, "label": row["label"]} for _, _, row, text in pool])
    write_jsonl(tmp / "test.jsonl", [{"text": _wrap(row["text"]), "label": row["label"]} for row in test])
    write_jsonl(tmp / "bare_pool.jsonl", [row for _, _, row, _ in pool])
    write_jsonl(tmp / "bare_test.jsonl", test)
    ingested = run_curate_many([["ingest", tmp / name, "-o", tmp / f"{Path(name).stem}.parquet"]
                                for name in ("pool.jsonl", "test.jsonl", "bare_pool.jsonl")])
    assert all(p.returncode == 0 for p in ingested), [p.stderr for p in ingested]

    calls = {
        "idf": ["decontaminate", tmp / "pool.parquet", "--against", tmp / "test.jsonl", "-o", tmp / "idf.parquet"],
        "none": ["decontaminate", tmp / "pool.parquet", "--against", tmp / "test.jsonl", "--weighting", "none",
                 "-o", tmp / "none.parquet"],
        "bare": ["decontaminate", tmp / "bare_pool.parquet", "--against", tmp / "bare_test.jsonl", "--weighting", "none",
                 "-o", tmp / "bare.parquet"],
    }
    done = dict(zip(calls, run_curate_many(list(calls.values()))))
    assert all(p.returncode == 0 for p in done.values()), {k: p.stderr for k, p in done.items()}

    ids = pl.read_parquet(tmp / "pool.parquet")["id"].to_list()
    bare_ids = pl.read_parquet(tmp / "bare_pool.parquet")["id"].to_list()
    bare_dropped = set(read_drops(tmp / "bare.parquet")["id"])
    return {
        "dir": tmp,
        "ids": ids,
        "kind": dict(zip(ids, (kind for kind, *_ in pool))),
        "copy_of": {ids[i]: k for i, (kind, k, _, _) in enumerate(pool) if kind == "copy"},
        "test_ids": pl.read_parquet(tmp / "test.parquet")["id"].to_list(),
        # pool rows whose own text (no template anywhere) overlaps a test row: real overlap in the corpus
        "overlapping": {ids[i] for i, bare in enumerate(bare_ids) if bare in bare_dropped},
        "out": {name: proc.stdout + proc.stderr for name, proc in done.items()},
    }


def _close_count(detail: str) -> int:
    match = re.search(r"close to (\d+) evaluation rows?", detail)
    assert match, detail
    return int(match.group(1))


def test_the_planted_copies_are_near_copies_on_their_own(runs):
    # Without the template, the old rule (every n-gram counts once) already drops every copy:
    # they are near-copies by the n-gram measure itself, not thanks to shared boilerplate.
    assert set(runs["copy_of"]) <= runs["overlapping"]


def test_idf_drops_the_near_copies_and_keeps_rows_that_only_share_stock_phrases(runs):
    tmp, kind = runs["dir"], runs["kind"]
    drops = read_drops(tmp / "idf.parquet")
    dropped = set(drops["id"])
    assert set(runs["copy_of"]) <= dropped  # every near-copy of a test row goes, with or without the template
    boilerplate = {i for i, k in kind.items() if k == "boilerplate"}
    wrongly = (dropped & boilerplate) - runs["overlapping"]
    assert not wrongly, drops.filter(pl.col("id").is_in(list(wrongly)))["detail"].to_list()
    assert dropped <= set(runs["copy_of"]) | runs["overlapping"]
    kept = set(pl.read_parquet(tmp / "idf.parquet")["id"])
    assert boilerplate - runs["overlapping"] <= kept

    # Each drop names the test row it copies and is close to that one row only.
    for row in drops.iter_rows(named=True):
        assert _close_count(row["detail"]) == 1, row["detail"]
        if row["id"] in runs["copy_of"]:
            assert row["duplicate_of"] == runs["test_ids"][runs["copy_of"][row["id"]]]
            assert row["reason"] == "eval_ngram_overlap" and "stock phrases left out, weighted by rarity" in row["detail"]
    manifest = read_manifest(tmp / "idf.parquet")
    assert manifest["parameters"]["weighting"] == "idf" and manifest["parameters"]["max_df"] == 10
    assert manifest["counts"]["dropped"] == drops.height
    assert manifest["counts"]["eval_rows_matched"] == drops["duplicate_of"].n_unique()
    assert f"{drops.height} training rows dropped, close to {drops['duplicate_of'].n_unique()} of {TEST_ROWS}" \
        in " ".join(runs["out"]["idf"].split())


def test_counting_every_ngram_alike_drops_boilerplate_rows(runs):
    tmp, kind = runs["dir"], runs["kind"]
    drops = read_drops(tmp / "none.parquet")
    dropped = set(drops["id"])
    assert set(runs["copy_of"]) <= dropped
    boilerplate = {i for i, k in kind.items() if k == "boilerplate"}
    legitimate = boilerplate - runs["overlapping"]
    assert len(dropped & legitimate) > len(legitimate) / 2  # the template alone is most of a short row's 8-grams
    # ... and the report shows it: such a drop is close to every test row, since all of them carry the template.
    closeness = dict(zip(drops["id"], map(_close_count, drops["detail"])))
    assert max(closeness[i] for i in dropped & legitimate) == TEST_ROWS
    manifest = read_manifest(tmp / "none.parquet")
    assert manifest["parameters"]["weighting"] == "none"
    assert manifest["counts"]["eval_rows_matched"] == TEST_ROWS
    assert manifest["counts"]["dropped"] > 2 * read_manifest(tmp / "idf.parquet")["counts"]["dropped"]


@pytest.mark.parametrize("args, message", [
    (["--max-df", "1"], "max_df must be a whole number of rows >= 2"),
    (["--max-df", "lots"], "max_df must be a number of rows"),
    (["--weighting", "bm25"], "'bm25' is not one of 'idf', 'none'"),
])
def test_bad_weighting_options_are_named(runs, args, message):
    tmp = runs["dir"]
    proc = run_curate("decontaminate", tmp / "pool.parquet", "--against", tmp / "test.jsonl", *args,
                      "-o", tmp / "bad.parquet")
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (tmp / "bad.parquet").exists()

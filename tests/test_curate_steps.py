"""curate dedup / decontaminate / select / explain / report on real files, through the real CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.drops import read_drops
from curate.manifest import read_manifest

CURATE = str(Path(sys.executable).parent / "curate")
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber cobalt ember flint").split()


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CURATE, *args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _sentence(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """40 distinct rows over three labels, plus planted duplicates of known rows."""
    tmp = tmp_path_factory.mktemp("steps")
    rng = random.Random(7)
    rows = [{"prompt": _sentence(rng), "completion": _sentence(rng), "label": ["a", "b", "c"][i % 3]} for i in range(40)]
    planted = {
        "exact": dict(rows[0]),
        "exact_case": {**rows[1], "prompt": "  " + rows[1]["prompt"].upper() + "\n"},
        "near": {**rows[2], "completion": rows[2]["completion"] + " zulu"},
    }
    with open(tmp / "raw.jsonl", "w") as fh:
        for row in rows + list(planted.values()):
            fh.write(json.dumps(row) + "\n")
    with open(tmp / "heldout.jsonl", "w") as fh:  # row 5 leaked into the held-out set, with a different answer
        fh.write(json.dumps({"prompt": rows[5]["prompt"], "completion": "something else entirely", "label": "b"}) + "\n")
    run("ingest", str(tmp / "raw.jsonl"), "-o", str(tmp / "raw.parquet"))
    return {"dir": tmp, "rows": rows, "planted": planted}


def test_dedup_finds_and_explains_planted_duplicates(corpus):
    tmp = corpus["dir"]
    run("dedup", str(tmp / "raw.parquet"), "--method", "exact", "--method", "near", "-o", str(tmp / "dedup.parquet"))
    kept = pl.read_parquet(tmp / "dedup.parquet")
    drops = read_drops(tmp / "dedup.parquet")
    assert kept.height == 40
    assert sorted(drops["reason"].to_list()) == ["exact_duplicate", "exact_duplicate", "near_duplicate"]
    near = drops.filter(pl.col("reason") == "near_duplicate").row(0, named=True)
    assert 0.8 <= near["similarity"] < 1.0
    raw = pl.read_parquet(tmp / "raw.parquet")
    assert near["duplicate_of"] == raw["id"][2]  # the original row 2 is the keeper
    assert kept.filter(pl.col("id") == raw["id"][0])["dedup_cluster_size"].item() == 2
    manifest = read_manifest(tmp / "dedup.parquet")
    assert manifest["counts"] == {"in": 43, "out": 40, "dropped": 3, "dropped_exact_duplicate": 2, "dropped_near_duplicate": 1,
                                  "label_conflict_flagged": 0}  # labelled rows: conflicts are looked for


def test_keep_longest_keeps_the_longer_copy(corpus, tmp_path):
    rows = [{"prompt": "short question here", "completion": "an answer"},
            {"prompt": "short question here", "completion": "an answer"},
            {"prompt": "other text", "completion": "another answer"}]
    src = tmp_path / "x.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    # With exact dedup on the prompt only, the two first rows collide; make the second longer.
    rows[1]["completion"] = "a much longer answer that should win"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    run("dedup", str(src), "--method", "exact", "--fields", "user", "--keep", "longest", "-o", str(tmp_path / "o.parquet"))
    kept = pl.read_parquet(tmp_path / "o.parquet")
    answers = [m[1]["content"] for m in kept["messages"].to_list()]
    assert "a much longer answer that should win" in answers and "an answer" not in answers


def test_semantic_dedup_catches_a_paraphrase(tmp_path):
    rows = [{"prompt": "How do I reset my password?", "completion": "Use the reset link."},
            {"prompt": "How can I reset my password?", "completion": "Use the reset link."},
            {"prompt": "What is the capital of France?", "completion": "Paris."}]
    src = tmp_path / "s.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    run("dedup", str(src), "--method", "semantic", "--semantic-threshold", "0.9", "-o", str(tmp_path / "o.parquet"))
    drops = read_drops(tmp_path / "o.parquet")
    assert drops["reason"].to_list() == ["semantic_duplicate"]
    assert 0.9 <= drops["similarity"][0] <= 1.0
    assert pl.read_parquet(tmp_path / "o.parquet").height == 2


def test_decontaminate_removes_the_leaked_row(corpus):
    tmp = corpus["dir"]
    run("decontaminate", str(tmp / "raw.parquet"), "--against", str(tmp / "heldout.jsonl"), "--fields", "user",
        "-o", str(tmp / "clean.parquet"))
    drops = read_drops(tmp / "clean.parquet")
    raw = pl.read_parquet(tmp / "raw.parquet")
    assert drops["id"].to_list() == [raw["id"][5]]
    assert drops["reason"][0] in ("eval_ngram_overlap", "eval_near_duplicate")
    assert pl.read_parquet(tmp / "clean.parquet").height == raw.height - 1


def test_select_is_stratified_and_diverse(corpus):
    tmp = corpus["dir"]
    run("select", str(tmp / "raw.parquet"), "--size", "9", "-o", str(tmp / "sel.parquet"))
    sel = pl.read_parquet(tmp / "sel.parquet")
    assert sel.height == 9
    counts = dict(sel.group_by("label").len().iter_rows())
    assert counts == {"a": 3, "b": 3, "c": 3}
    # Diversity: the planted copies of rows 0 and 1 never both make it in.
    assert sel["id"].n_unique() == 9
    assert sel["select_rank"].to_list() == list(range(9))
    drops = read_drops(tmp / "sel.parquet")
    assert drops.height == pl.read_parquet(tmp / "raw.parquet").height - 9
    assert set(drops["reason"]) == {"not_selected"}


def test_select_balance_evens_out_labels(tmp_path):
    rows = [{"text": f"row number {i} " + " ".join(WORDS[i % 30: i % 30 + 5]), "label": "big" if i < 16 else "small"} for i in range(20)]
    src = tmp_path / "l.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    run("select", str(src), "--size", "8", "--stratify", "balance", "-o", str(tmp_path / "b.parquet"))
    assert dict(pl.read_parquet(tmp_path / "b.parquet").group_by("label").len().iter_rows()) == {"big": 4, "small": 4}


def test_explain_tells_a_dropped_rows_story(corpus):
    tmp = corpus["dir"]
    run("dedup", str(tmp / "raw.parquet"), "-o", str(tmp / "d2.parquet"))
    drops = read_drops(tmp / "d2.parquet").filter(pl.col("reason") == "near_duplicate")
    proc = run("explain", drops["id"][0][:10], str(tmp / "d2.parquet"))
    out = proc.stderr + proc.stdout
    assert "near_duplicate" in out and "dropped" in out
    assert drops["duplicate_of"][0] in out  # which row it duplicates
    assert "final: dropped by curate dedup" in " ".join(out.split())


def test_report_renders_every_section(corpus):
    tmp = corpus["dir"]
    run("dedup", str(tmp / "raw.parquet"), "-o", str(tmp / "d3.parquet"))
    run("select", str(tmp / "d3.parquet"), "--size", "12", "-o", str(tmp / "s3.parquet"))
    run("report", str(tmp / "s3.parquet"), "-o", str(tmp / "report.html"))
    page = (tmp / "report.html").read_text()
    for heading in ("Funnel", "Drops by reason", "Labels before and after", "Lengths", "Largest duplicate clusters"):
        assert f"<h2>{heading}" in page
    assert page.count("data:image/png;base64,") >= 4
    assert "exact_duplicate" in page and "not_selected" in page


def test_report_shows_drops_of_a_step_that_read_a_task_spec(corpus, tmp_path):
    # `synth generate` reads a YAML task spec and drops unparsable samples: the report must show
    # the drops without trying to read the spec as data (the bundled recipe's report failed so).
    from curate.lineage import Step
    from curate.report import _input_rows

    spec = tmp_path / "task.yaml"
    spec.write_text("name: t\n")
    step = Step("synth generate", tmp_path / "synth.parquet", [spec, corpus["dir"] / "raw.parquet"], {})
    rows = _input_rows(step)
    assert set(rows) == set(pl.read_parquet(corpus["dir"] / "raw.parquet")["id"])
    assert _input_rows(Step("synth generate", tmp_path / "synth.parquet", [spec], {})) == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "1.5"], "outside (0, 1]"),
        (["--fields", "nope"], "unknown field"),
        (["--keep", "score", "--score-column", "missing"], "score column 'missing'"),
    ],
)
def test_dedup_bad_parameters_write_nothing(corpus, tmp_path, args, message):
    out = tmp_path / "never.parquet"
    proc = run("dedup", str(corpus["dir"] / "raw.parquet"), *args, "-o", str(out), ok=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_rows_with_empty_text_are_named(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_text(json.dumps({"prompt": "hello", "completion": "there"}) + "\n"
                   + json.dumps({"prompt": "", "completion": "x"}) + "\n")
    proc = run("dedup", str(src), "--fields", "user", "-o", str(tmp_path / "o.parquet"))
    assert "row 2" in proc.stderr and "no text" in proc.stderr  # named, and left for filter to judge
    assert pl.read_parquet(tmp_path / "o.parquet").height == 2
    proc = run("dedup", str(src), "--fields", "system", "-o", str(tmp_path / "none.parquet"), ok=False)
    assert "no row has text in fields system" in proc.stderr and not (tmp_path / "none.parquet").exists()


def test_select_size_zero_is_refused(corpus, tmp_path):
    proc = run("select", str(corpus["dir"] / "raw.parquet"), "--size", "0", "-o", str(tmp_path / "o.parquet"), ok=False)
    assert "at least 1" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_filter_cli_drops_by_rule_and_score_with_reasons(tmp_path):
    rows = [
        {"prompt": "What is the refund window?", "completion": "Thirty days from delivery.", "label": "billing", "score": 4},
        {"prompt": "Hello {{customer_name}}, how can I help?", "completion": "Tell me more.", "label": "billing", "score": 5},
        {"prompt": "Why is the app slow?", "completion": "Clear the cache and restart it.", "label": "tech", "score": 1},
        {"prompt": "Where is my parcel?", "completion": "It ships tomorrow.", "label": "other", "score": 5},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    # Scores must be real columns: a stage (here a tiny polars step) writes them, as `curate score` does.
    records = pl.read_parquet(run("ingest", str(src), "-o", str(tmp_path / "in.parquet")) and tmp_path / "in.parquet")
    records = records.with_columns(pl.col("meta").str.json_path_match("$.score").cast(pl.Int64).alias("judge_score"))
    records.write_parquet(tmp_path / "scored.parquet")
    run("filter", str(tmp_path / "scored.parquet"), "--min-score", "judge_score=3", "--rule", "known=label <> 'other'",
        "-o", str(tmp_path / "f.parquet"))
    kept = pl.read_parquet(tmp_path / "f.parquet")
    drops = read_drops(tmp_path / "f.parquet")
    assert kept["messages"].list.get(0).struct.field("content").to_list() == ["What is the refund window?"]
    assert dict(zip(drops["reason"], drops["detail"])).keys() == {"placeholder", "low_score:judge_score", "rule:known"}
    assert "1" in drops.filter(pl.col("reason") == "low_score:judge_score")["detail"][0]
    assert kept["filter_tokens"].to_list()[0] > 0

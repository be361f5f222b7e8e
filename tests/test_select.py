"""curate select follows the objective: --stratify auto and --size auto, through the real CLI.

The pool is real text (tests/corpus.py: docstrings labelled by their module), thinned so
that one label ("files") is most of it, as in a skewed real pool; the test sets are
held-out rows of the same corpus, one with its natural imbalance and one balanced.
"""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pytest

from conftest import run_curate, write_jsonl
from corpus import docstring_corpus
from curate.drops import read_drops
from curate.manifest import read_manifest

DOMINANT = "files"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """pool.jsonl (dominant label over half), test.jsonl (imbalanced), balanced.jsonl (5 per label)."""
    tmp = tmp_path_factory.mktemp("select")
    seen: Counter = Counter()
    pool, test = [], []
    for row in docstring_corpus():
        j = seen[row["label"]]
        seen[row["label"]] += 1
        if j % 4 == 0:
            test.append(row)
        elif row["label"] == DOMINANT or j % 5 == 1:
            pool.append(row)
    per_label: Counter = Counter()
    balanced = []
    for row in test:
        if per_label[row["label"]] < 5:
            per_label[row["label"]] += 1
            balanced.append(row)
    counts = Counter(r["label"] for r in pool)
    test_counts = Counter(r["label"] for r in test)
    # What the tests rely on: a dominant label, an imbalanced test set, a balanced one.
    assert counts[DOMINANT] / len(pool) > 0.6 and len(counts) == 7
    assert max(test_counts.values()) / min(test_counts.values()) > 1.5
    assert set(per_label.values()) == {5} and len(per_label) == 7
    return {"dir": tmp, "pool": write_jsonl(tmp / "pool.jsonl", pool), "test": write_jsonl(tmp / "test.jsonl", test),
            "balanced": write_jsonl(tmp / "balanced.jsonl", balanced), "counts": counts}


def select(data: dict, name: str, *args: str) -> tuple[pl.DataFrame, dict, str]:
    out = data["dir"] / f"{name}.parquet"
    proc = run_curate("select", data["pool"], "-o", out, *args)
    assert proc.returncode == 0, proc.stderr
    return pl.read_parquet(out), read_manifest(out), proc.stderr


def label_counts(df: pl.DataFrame) -> dict[str, int]:
    return dict(df.group_by("label").len().iter_rows())


def assert_balanced(got: dict[str, int], pool: Counter, size: int) -> None:
    """Equal shares: a label short of rows gives all it has, the others are within one of each other."""
    assert sum(got.values()) == size
    open_ = [got[k] for k in pool if got[k] < pool[k]]
    assert open_ and max(open_) - min(open_) <= 1
    assert all(got[k] == pool[k] for k in pool if pool[k] < min(open_))
    assert all(got[k] <= max(open_) for k in pool)


def test_accuracy_on_an_imbalanced_test_keeps_the_mix_with_a_cap(data):
    size = 60
    df, manifest, stderr = select(data, "accuracy", "--size", str(size), "--metric", "accuracy", "--test", data["test"])
    got, pool = label_counts(df), data["counts"]
    others = sum(v for k, v in pool.items() if k != DOMINANT)
    assert size * pool[DOMINANT] / sum(pool.values()) > 0.5 * size  # pure proportions would break the cap
    assert got[DOMINANT] == int(0.5 * size)
    assert sum(got.values()) == size
    for label, n in pool.items():  # the excess went to the others in proportion to their size
        if label != DOMINANT:
            assert abs(got[label] - (size - got[DOMINANT]) * n / others) < 1, (label, got)
    params = manifest["parameters"]
    assert params["stratify"] == "auto" and params["stratify_mode"] == "keep"
    assert "accuracy" in params["stratify_reason"] and "imbalanced" in params["stratify_reason"]
    assert params["metric"] == "accuracy" and params["test"] == str(data["test"]) and params["max_class_share"] == 0.5
    assert params["size_chosen"] == size and params["size_reason"] == f"asked for {size}"
    assert str(data["test"]) in [i["path"] for i in manifest["inputs"]]
    assert "stratify: keep - " + params["stratify_reason"] in " ".join(stderr.split())


def test_macro_f1_and_a_balanced_test_balance_the_labels(data):
    size = 60
    f1, f1_manifest, stderr = select(data, "macro", "--size", str(size), "--metric", "macro_f1", "--test", data["test"])
    assert_balanced(label_counts(f1), data["counts"], size)
    assert f1_manifest["parameters"]["stratify_mode"] == "balance"
    assert "macro_f1" in f1_manifest["parameters"]["stratify_reason"]
    assert "stratify: balance" in stderr

    bal, bal_manifest, _ = select(data, "balanced", "--size", str(size), "--metric", "accuracy",
                                  "--test", data["balanced"])
    assert bal_manifest["parameters"]["stratify_mode"] == "balance"
    assert "test set's labels are balanced" in bal_manifest["parameters"]["stratify_reason"]
    assert label_counts(bal) == label_counts(f1)


def test_size_auto_on_a_small_set_keeps_every_row(data):
    df, manifest, stderr = select(data, "auto", "--size", "auto")
    rows = sum(data["counts"].values())
    assert df.height == rows and label_counts(df) == dict(data["counts"])
    assert sorted(df["select_rank"].to_list()) == list(range(rows))
    assert read_drops(data["dir"] / "auto.parquet").height == 0
    params = manifest["parameters"]
    assert params["size"] == "auto" and params["size_chosen"] == rows
    assert f"all {rows} rows" in params["size_reason"]
    assert params["stratify_mode"] == "keep" and "no metric or test set" in params["stratify_reason"]
    assert f"size: {rows} - " in stderr


def test_size_auto_on_a_large_set_stops_at_auto_max_and_says_why(data):
    df, manifest, stderr = select(data, "automax", "--size", "auto", "--auto-max", "50", "--stratify", "none")
    assert df.height == 50
    assert manifest["parameters"]["stratify_mode"] == "none" and manifest["parameters"]["auto_max"] == 50
    assert "train curve" in manifest["parameters"]["size_reason"] and "train curve" in stderr


def test_size_auto_follows_the_learning_curves_knee(data):
    curve = data["dir"] / "curve.json"
    curve.write_text(json.dumps({"metric": "accuracy", "points": [], "knee": {"size": 40, "metric": 0.8}}))
    df, manifest, _ = select(data, "knee", "--size", "auto", "--curve", curve)
    assert df.height == 40
    assert manifest["parameters"]["size_chosen"] == 40 and "knee is 40" in manifest["parameters"]["size_reason"]
    assert str(curve) in [i["path"] for i in manifest["inputs"]]

    curve.write_text(json.dumps({"knee": {"size": "all"}}))
    df, manifest, _ = select(data, "knee_all", "--size", "auto", "--curve", curve)
    assert df.height == sum(data["counts"].values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "lots"], "neither a number of rows nor 'auto'"),
        (["--size", "auto", "--curve", "CURVE"], "field 'knee.size'"),
        (["--size", "10", "--max-class-share", "0"], "outside (0, 1]"),
        (["--size", "10", "--test", "MISSING"], "missing.jsonl"),
    ],
)
def test_bad_select_options_name_the_problem_and_write_nothing(data, tmp_path, args, message):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"knee": {"size": -3}}))
    args = [str(curve) if a == "CURVE" else str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in args]
    out = tmp_path / "out" / "o.parquet"
    proc = run_curate("select", data["pool"], "-o", out, *args)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.parent.exists()

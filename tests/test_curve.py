"""`train curve` and the evaluation's intervals, through the real trainer and the real vLLM CPU engine.

One curve (three nested sizes of a real corpus, one epoch each, one engine start) is run
through the installed `train` script for the module; the checks read what it wrote. The
pure parts (nested order, the knee, bootstrap intervals) are tested without a model.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import run_train, write_jsonl
from corpus import docstring_corpus
from train import bootstrap
from train.curve import knee, nested_order, parse_sizes
from train.errors import TrainError

LABELS = ("files", "math", "strings")
SIZES = (20, 40, 60)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    """60 pool rows and 25 test rows of real docstrings; one test row is a near-copy of a pool row."""
    root = tmp_path_factory.mktemp("curve")
    rows = [r for r in docstring_corpus() if r["label"] in LABELS]
    random.Random(0).shuffle(rows)
    pool, test = rows[24:84], rows[:24]
    longest = max(pool, key=lambda r: len(r["text"].split()))
    near_copy = {**longest, "text": longest["text"] + " indeed"}  # one word added: not an exact copy
    return {"root": root, "pool": write_jsonl(root / "pool.jsonl", pool),
            "test": write_jsonl(root / "test.jsonl", [*test, near_copy]), "near_copy": near_copy}


@pytest.fixture(scope="module")
def curve(corpus_files) -> dict:
    out = corpus_files["root"] / "curve"
    proc = run_train("curve", corpus_files["pool"], "--test", corpus_files["test"], "-o", out,
                     "--sizes", ",".join(map(str, SIZES)), "--epochs", "1", "--max-length", "96", "--max-model-len", "1024",
                     "--quiet", timeout=1500)
    return {"out": out, "proc": proc, "summary": json.loads((out / "curve.json").read_text()),
            "eval": json.loads((out / "eval" / "eval.json").read_text())}


# -- through the trainer and the engine ---------------------------------------------------------


@pytest.mark.slow
def test_curve_trains_nested_subsets_and_names_the_knee(curve):
    summary, out = curve["summary"], curve["out"]
    points = summary["points"]
    assert [p["size"] for p in points] == list(SIZES)
    subsets = [pl.read_parquet(out / f"size-{n}" / "data.parquet")["id"].to_list() for n in SIZES]
    for small, large in zip(subsets, subsets[1:]):
        assert large[: len(small)] == small  # nested: a larger size adds rows to the smaller one
    for p in points:
        assert p["low"] <= p["value"] <= p["high"] and p["train_seconds"] > 0
        assert (Path(p["adapter"]) / "adapter_config.json").is_file()
    assert summary["knee"] == knee(points, summary["tolerance_points"])  # recomputed from the written points
    best = max(p["value"] for p in points)
    assert summary["knee"]["value"] >= best - summary["tolerance_points"] / 100 - 1e-9
    assert all(p["value"] < best - summary["tolerance_points"] / 100 for p in points if p["size"] < summary["knee"]["size"])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    said = " ".join((curve["proc"].stdout + curve["proc"].stderr).split())  # the console writes to stderr
    assert f"knee: {summary['knee']['size']} rows" in said


@pytest.mark.slow
def test_every_size_meets_one_kshot_baseline_in_one_engine(curve):
    report = curve["eval"]
    n = report["rows"]
    assert set(report["results"]) == {"base", "kshot", "adapter", "n=20", "n=40"}
    assert report["usage"]["requests"] == 5 * n  # one engine answered every contender
    assert report["shots_from"] == str(curve["summary"]["data"])  # the declared pool, not an adapter's split
    pred = pl.read_parquet(curve["out"] / "eval" / "predictions.parquet")
    for name in ("adapter", "n=20", "n=40"):
        rows = pred.filter(pl.col("contender") == name).sort("row")
        ci = report["intervals"][name]["accuracy"]
        assert ci["value"] == pytest.approx(rows["correct"].mean())
        diff = report["differences"].get(f"{name}-adapter")
        if name != "adapter":
            main = pred.filter(pl.col("contender") == "adapter").sort("row")
            assert diff["accuracy"]["value"] == pytest.approx(rows["correct"].mean() - main["correct"].mean())
            assert diff["accuracy"]["low"] <= diff["accuracy"]["value"] <= diff["accuracy"]["high"]


@pytest.mark.slow
def test_a_near_copy_of_a_training_row_in_the_test_set_is_warned_about(curve, corpus_files):
    report = curve["eval"]
    assert report["test_rows_in_training"] == 0  # not an exact copy...
    assert report["test_rows_near_training"] >= 1  # ...but a near one
    test_ids = pl.read_parquet(curve["out"] / "eval" / "predictions.parquet").filter(
        pl.col("prompt") == corpus_files["near_copy"]["text"])["id"].unique().to_list()
    assert set(test_ids) <= set(report["near_copy_ids"])
    assert "near-copy in the training data" in " ".join((curve["proc"].stdout + curve["proc"].stderr).split())


@pytest.mark.slow
def test_a_rerun_reuses_every_adapter(curve):
    """Same rows, same settings: no size is trained again."""
    marks = {n: (curve["out"] / f"size-{n}" / "trained.json").stat().st_mtime for n in SIZES}
    adapters = {n: (curve["out"] / f"size-{n}" / "adapter" / "adapter_model.safetensors").stat().st_mtime for n in SIZES}
    from train.config import LoraTrainConfig
    from train.curve import _trained

    for n in SIZES:
        folder = curve["out"] / f"size-{n}"
        config = LoraTrainConfig(epochs=1, max_length=96)
        assert _trained(folder / "data.parquet", folder, config, progress=False) == folder / "adapter"
    assert {n: (curve["out"] / f"size-{n}" / "trained.json").stat().st_mtime for n in SIZES} == marks
    assert {n: (curve["out"] / f"size-{n}" / "adapter" / "adapter_model.safetensors").stat().st_mtime for n in SIZES} == adapters


# -- without a model ------------------------------------------------------------------------------


def test_nested_order_keeps_every_prefix_stratified():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    order = nested_order(labels, "keep", seed=1)
    assert sorted(order) == list(range(100))
    for n in (10, 20, 50):
        counts = Counter(labels[i] for i in order[:n])
        assert abs(counts["a"] - 0.6 * n) <= 1 and abs(counts["b"] - 0.3 * n) <= 1 and abs(counts["c"] - 0.1 * n) <= 1
    balanced = nested_order(labels, "balance", seed=1)
    counts = Counter(labels[i] for i in balanced[:30])
    assert counts == {"a": 10, "b": 10, "c": 10}
    counts = Counter(labels[i] for i in balanced[:60])  # c runs out at 10: the others share its part
    assert counts["c"] == 10 and counts["a"] == counts["b"] == 25
    assert nested_order(labels, "keep", seed=1) == order and nested_order(labels, "keep", seed=2) != order


def test_knee_is_the_smallest_size_within_the_tolerance():
    points = [{"size": 100, "value": 0.60}, {"size": 200, "value": 0.71}, {"size": 400, "value": 0.725},
              {"size": 800, "value": 0.73}]
    assert knee(points, 2.0)["size"] == 200
    assert knee(points, 0.0)["size"] == 800
    assert knee(points, 20.0)["size"] == 100
    assert "within 2 points" in knee(points, 2.0)["reason"]


def test_sizes_are_parsed_and_clipped():
    assert parse_sizes("125,250,all", 200) == [125, 200]
    assert parse_sizes("all", 57) == [57]
    with pytest.raises(TrainError, match="too few"):
        parse_sizes("5,20", 100)
    with pytest.raises(TrainError, match="not a number"):
        parse_sizes("ten", 100)


def test_bootstrap_intervals_cover_the_value_and_pair_the_rows():
    rng = np.random.default_rng(0)
    gold = rng.choice(["x", "y", "z"], size=300).tolist()
    good = [g if rng.random() < 0.8 else "x" for g in gold]
    worse = [g if rng.random() < 0.6 else "x" for g in gold]
    draws = bootstrap.resample_indices(300, seed=0)
    for metric in ("accuracy", "macro_f1"):
        ci = bootstrap.interval("classification", metric, gold, good, ["x", "y", "z"], draws=draws)
        assert ci["low"] < ci["value"] < ci["high"] and ci["high"] - ci["low"] < 0.2
    diff = bootstrap.paired_difference("classification", "accuracy", gold, good, worse, draws=draws)
    assert diff["value"] > 0.1 and diff["significant"] and diff["low"] > 0
    same = bootstrap.paired_difference("classification", "accuracy", gold, good, list(good), draws=draws)
    assert same["value"] == 0 and same["low"] == same["high"] == 0 and not same["significant"]
    # macro-F1 on every row agrees with scikit-learn's
    from sklearn.metrics import f1_score

    value = bootstrap.interval("classification", "macro_f1", gold, good, ["x", "y", "z"], draws=draws)["value"]
    assert value == pytest.approx(f1_score(gold, good, labels=["x", "y", "z"], average="macro"))

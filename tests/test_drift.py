"""`curate drift` on real shifts of a real corpus, through the installed console script and the packaged embedder.

The corpus is `tests/corpus.py`: docstrings labelled by the module they document. A random
split of it is one distribution; CURRENT drawn from modules REFERENCE never saw is a topic
shift; the same modules with their shares moved is a label-mix shift; twenty rows of the same
distribution are a small set that must not raise an alarm.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_curate_many, write_jsonl
from corpus import docstring_corpus

from curate.drift import DriftConfig, compare_shares, mmd_permutation_test
from curate.manifest import read_manifest

NEW_TOPICS = {"random", "linear_algebra", "fourier"}
"""Modules whose docstrings form the topic shift: REFERENCE has none of them."""
ALPHA = DriftConfig().alpha


def _split_by_label(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Each label's rows shuffled and cut in two halves: two disjoint sets with the same topics."""
    rng = random.Random(seed)
    first, second = [], []
    for label in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        first += group[: len(group) // 2]
        second += group[len(group) // 2:]
    return first, second


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every scenario's files and one `curate drift` run each (the first fills the embedding cache)."""
    tmp = tmp_path_factory.mktemp("drift")
    rows = docstring_corpus()
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    half = len(shuffled) // 2
    ref_mix, cur_mix = _split_by_label(rows, seed=1)
    heavy = {"files", "strings", "time"}  # REFERENCE keeps these whole and a quarter of the rest; CURRENT the opposite
    ref_mix = [r for i, r in enumerate(ref_mix) if r["label"] in heavy or i % 4 == 0]
    cur_mix = [r for i, r in enumerate(cur_mix) if r["label"] not in heavy or i % 4 == 0]
    scenarios = {
        "same": (shuffled[half:], shuffled[:half]),
        "topic": ([r for r in rows if r["label"] in NEW_TOPICS], [r for r in rows if r["label"] not in NEW_TOPICS]),
        "mix": (cur_mix, ref_mix),
        "tiny": (shuffled[:20], shuffled[20:]),
    }
    calls = []
    for name, (current, reference) in scenarios.items():
        write_jsonl(tmp / f"{name}.current.jsonl", current)
        write_jsonl(tmp / f"{name}.reference.jsonl", reference)
        json_to = [] if name == "tiny" else [tmp / f"{name}.json"]  # tiny: bare --json, the figures on stdout
        calls.append(["drift", tmp / f"{name}.current.jsonl", "--against", tmp / f"{name}.reference.jsonl",
                      "--json", *json_to, "-o", tmp / f"{name}.html", "--fail-on-drift"])
    procs = run_curate_many(calls[:1]) + run_curate_many(calls[1:])  # "same" embeds every row: the rest read the cache
    out = {"tmp": tmp, "scenarios": scenarios}
    for (name, _), proc in zip(scenarios.items(), procs):
        report = json.loads((tmp / f"{name}.json").read_text()) if (tmp / f"{name}.json").exists() else None
        if name == "tiny":
            assert not (tmp / "-").exists() and report is None
            report = json.loads(proc.stdout)  # stdout holds the JSON alone: the console's lines are on stderr
        out[name] = {"proc": proc, "report": report}
    return out


def test_same_distribution_is_no_drift(runs):
    run = runs["same"]
    assert run["proc"].returncode == 0, run["proc"].stderr
    report = run["report"]
    assert report["drift"] is False and report["reasons"] == [] and report["verdict"] == "no drift"
    checks = report["checks"]
    assert set(checks) == {"classifier", "mmd", "labels", "length", "language"}
    assert not any("skipped" in c for c in checks.values())
    assert checks["classifier"]["value"] < DriftConfig().auc_threshold or checks["classifier"]["p_value"] >= ALPHA
    assert checks["mmd"]["p_value"] >= ALPHA and checks["labels"]["p_value"] >= ALPHA
    current, reference = runs["scenarios"]["same"]
    assert report["current"]["rows"] == len(current) and report["reference"]["rows"] == len(reference)
    assert report["fields"] == ["user"]  # classification rows: the text, never the label
    assert "no drift" in run["proc"].stderr
    page = (runs["tmp"] / "same.html").read_text()
    assert "Verdict: No drift" in page and page.count("data:image/png;base64,") >= 4
    for output in ("same.json", "same.html"):  # a manifest beside each report, with every option
        manifest = read_manifest(runs["tmp"] / output)
        assert manifest["command"] == "curate drift" and manifest["counts"]["drift"] == 0
        assert [Path(i["path"]).name for i in manifest["inputs"]] == ["same.current.jsonl", "same.reference.jsonl"]
        assert {"auc_threshold", "alpha", "permutations", "max_rows", "fields", "fail_on_drift", "json"} <= set(manifest["parameters"])


def test_topic_shift_is_drift_and_says_what_changed(runs):
    run = runs["topic"]
    assert run["proc"].returncode == 3, run["proc"].stderr
    report = run["report"]
    checks = report["checks"]
    assert report["drift"] is True and "DRIFT" in run["proc"].stderr
    assert checks["classifier"]["drift"] and checks["classifier"]["value"] >= DriftConfig().auc_threshold
    assert checks["classifier"]["p_value"] < ALPHA and checks["classifier"]["permutations"] == DriftConfig().permutations
    assert checks["mmd"]["drift"] and checks["labels"]["drift"]
    assert set(checks["labels"]["new_labels"]) == NEW_TOPICS
    assert checks["classifier"]["summary"] in report["reasons"]

    # The separating terms: each is in more CURRENT rows than REFERENCE rows, and they name the new topics.
    current, reference = runs["scenarios"]["topic"]
    terms = report["terms"]["current"]
    assert terms and all(t["current_share"] > t["reference_share"] and t["z"] > 0 for t in terms)
    for t in terms:
        in_current = sum(t["term"] in r["text"].lower() for r in current) / len(current)
        assert in_current >= t["current_share"] > 0  # a substring count is at least the word count
    assert {t["term"] for t in terms} & {"random", "matrix", "fourier", "samples", "distribution", "transform"}
    assert any(t["term"] in run["proc"].stderr for t in terms[:6])

    # The farthest CURRENT rows: farther from REFERENCE than REFERENCE's own rows are from each other.
    near = report["nearest_reference"]
    assert near["current_mean"] > near["reference_mean"]
    distances = [e["distance"] for e in report["examples"]]
    assert len(distances) == DriftConfig().examples and distances == sorted(distances, reverse=True)
    texts = {r["text"] for r in current}
    assert all(e["text"] in texts and e["distance"] >= near["current_median"] for e in report["examples"])


def test_label_mix_shift_is_label_drift(runs):
    run = runs["mix"]
    report = run["report"]
    labels = report["checks"]["labels"]
    assert run["proc"].returncode == 3, run["proc"].stderr
    assert labels["drift"] and labels["new_labels"] == [] and labels["missing_labels"] == []
    assert labels["js_distance"] >= DriftConfig().label_js_threshold and labels["p_value"] < ALPHA
    current, reference = runs["scenarios"]["mix"]
    for side, data in (("current", current), ("reference", reference)):
        counts = Counter(r["label"] for r in data)
        assert labels["counts"][side] == dict(counts)
        assert labels[side] == pytest.approx({k: v / len(data) for k, v in counts.items()})
    assert labels["summary"] in report["reasons"]
    assert "label shares side by side" in (runs["tmp"] / "mix.html").read_text()


def test_tiny_current_raises_no_false_alarm(runs):
    run = runs["tiny"]
    assert run["proc"].returncode == 0, run["proc"].stderr
    report = run["report"]
    assert report["drift"] is False and report["current"]["compared"] == 20
    classifier = report["checks"]["classifier"]
    assert classifier["folds"] == DriftConfig().folds and classifier["permutations"] >= 20
    assert classifier["p_value"] >= ALPHA
    # Twenty rows over seven labels look moved (a large JS distance) but the test says it is noise.
    assert report["checks"]["labels"]["p_value"] >= ALPHA


def test_bad_input_names_the_file_or_option(runs, tmp_path):
    cur, ref = runs["tmp"] / "same.current.jsonl", runs["tmp"] / "same.reference.jsonl"
    missing = tmp_path / "missing.jsonl"
    ref_json = tmp_path / "reference.json"  # a JSON dataset: the --json report may not overwrite it
    ref_json.write_text(json.dumps(runs["scenarios"]["same"][1]))
    calls = {
        "missing": ["drift", missing, "--against", ref],
        "suffix": ["drift", cur, "--against", ref, "--json", tmp_path / "out.txt"],
        "input": ["drift", cur, "--against", ref_json, "--json", ref_json],
        "threshold": ["drift", cur, "--against", ref, "--auc-threshold", "high"],
        "permutations": ["drift", cur, "--against", ref, "--permutations", "10"],
        "fields": ["drift", cur, "--against", ref, "--fields", "body"],
    }
    procs = dict(zip(calls, run_curate_many(list(calls.values()))))
    assert procs["missing"].returncode == 1 and str(missing) in procs["missing"].stderr
    assert procs["suffix"].returncode == 1 and "out.txt" in procs["suffix"].stderr
    assert procs["input"].returncode == 1 and "is also an input" in procs["input"].stderr
    for name in ("threshold", "permutations", "fields"):
        assert procs[name].returncode == 2, (name, procs[name].stderr)
    assert "--auc-threshold" in procs["threshold"].stderr and "at least 100" in procs["permutations"].stderr
    assert "body" in procs["fields"].stderr
    assert not any("Traceback" in p.stderr for p in procs.values())
    assert not (tmp_path / "out.txt").exists() and json.loads(ref_json.read_text()) == runs["scenarios"]["same"][1]


def test_sparse_categories_are_pooled_for_the_chi_square():
    """One odd language among twenty rows is no shift; the same share among a thousand is."""
    reference = Counter({"en": 990, "de": 5, "fr": 5})
    small = compare_shares(Counter({"en": 19, "gl": 1}), reference)
    large = compare_shares(Counter({"en": 950, "gl": 50}), reference)
    assert small["p_value"] > ALPHA and large["p_value"] < ALPHA
    assert small["current"]["gl"] == pytest.approx(0.05) and small["reference"]["gl"] == 0


def test_mmd_permutation_p_value_tells_shifted_from_same():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(120, 16))
    same, _, null_same = mmd_permutation_test(base[:60], base[60:], 100)
    shifted, _, null_shifted = mmd_permutation_test(base[:60], base[60:] + 0.5, 100)
    assert (np.sum(null_shifted >= shifted) + 1) / 101 < ALPHA
    assert (np.sum(null_same >= same) + 1) / 101 > ALPHA
    assert shifted > same

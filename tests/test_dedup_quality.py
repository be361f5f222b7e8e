"""Dedup that matches what users mean: datatrove-style normalization, fields by task, label conflicts.

The real-data check builds a corpus from docstrings of installed packages (scipy.stats, scipy.special,
numpy, polars: text written by others, full of templated near-copies), computes its own truth the
way datatrove defines a near duplicate (5-word shingles, case, punctuation and numbers ignored,
exact Jaccard >= 0.8, every pair compared), and scores `curate dedup --method near` against it.
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

CURATE = str(Path(sys.executable).parent / "curate")


def _curate(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def _docstrings() -> list[str]:
    texts, seen = [], set()
    for module, owner in (("scipy.stats", None), ("scipy.special", None), ("numpy", None), ("polars", "Expr")):
        obj = importlib.import_module(module)
        obj = getattr(obj, owner) if owner else obj
        for name in sorted(dir(obj)):
            doc = None if name.startswith("_") else getattr(getattr(obj, name, None), "__doc__", None)
            if not isinstance(doc, str):
                continue
            text = " ".join(doc.split())[:400]
            if len(text.split()) >= 8 and text not in seen:
                seen.add(text)
                texts.append(text)
    return texts


def _datatrove_words(text: str) -> list[str]:
    """datatrove's TextNormConfig defaults, written independently of smallset: lower case, diacritics folded,
    numbers to 0, punctuation and symbols removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = re.sub(r"\d+", "0", text)
    text = "".join(c for c in text if not unicodedata.category(c).startswith(("P", "S")))
    return text.split()


def _truth_dropped(texts: list[str], threshold: float = 0.8, n: int = 5) -> set[int]:
    """Rows a keep-first dedup must drop: all but the first of each component of the true pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    shingles = []
    for text in texts:
        words = _datatrove_words(text)
        shingles.append({" ".join(words)} if len(words) <= n else {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)})
    pairs = [(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
             if len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j]) >= threshold]
    assert len(pairs) >= 50, "the corpus should hold templated near-copies"
    a = np.array(pairs)
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a[:, 0], a[:, 1])), shape=(len(texts),) * 2), directed=False)
    first = {}
    for row, comp in enumerate(label):
        first.setdefault(comp, row)
    return {row for row, comp in enumerate(label) if first[comp] != row}


def test_near_dedup_on_real_text_matches_datatrove_style_truth(tmp_path):
    texts = _docstrings()
    truth = _truth_dropped(texts)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{k}", "prompt": t, "completion": "-"}) + "\n" for k, t in enumerate(texts)))
    _curate("ingest", src, "-o", tmp_path / "docs.parquet")
    # datatrove's normalization in full (numbers too), as the truth is defined; the default keeps numbers
    _curate("dedup", tmp_path / "docs.parquet", "--method", "near", "--normalize", "lower,punct,digits,accents",
            "-o", tmp_path / "out.parquet")
    row_of = {i: k for k, i in enumerate(pl.read_parquet(tmp_path / "docs.parquet")["id"])}  # ingest keeps the order
    dropped = {row_of[i] for i in pl.read_parquet(tmp_path / "out.parquet.drops.parquet")["id"].to_list()}
    precision, recall = len(dropped & truth) / len(dropped), len(dropped & truth) / len(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, len(dropped), len(truth))


def _classification(tmp_path: Path, rows: list[tuple[str, str]]) -> tuple[Path, dict[str, str]]:
    """The ingested rows, and their ids as t0, t1, ... in input order."""
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    _curate("ingest", src, "-o", tmp_path / "rows.parquet")
    return tmp_path / "rows.parquet", {i: f"t{k}" for k, i in enumerate(pl.read_parquet(tmp_path / "rows.parquet")["id"])}


ROWS = [
    ("My refund never arrived, please check the order.", "billing"),
    ("my refund never arrived please check the order", "shipping"),  # same text, another label
    ("The app crashes when I open settings.", "technical"),
    ("The app crashes when I open settings!", "technical"),  # same text, same label
    ("I cannot log in since the last update of the mobile app.", "account"),
]


def test_one_text_with_two_labels_is_a_label_conflict_not_two_rows(tmp_path):
    data, name = _classification(tmp_path, ROWS)
    _curate("dedup", data, "--method", "exact", "-o", tmp_path / "flag.parquet")
    kept = pl.read_parquet(tmp_path / "flag.parquet")
    drops = pl.read_parquet(tmp_path / "flag.parquet.drops.parquet")
    assert {name[i]: r for i, r in zip(drops["id"], drops["reason"])} == {"t1": "label_conflict", "t3": "exact_duplicate"}
    conflict = drops.filter(pl.col("reason") == "label_conflict").row(0, named=True)
    assert name[conflict["duplicate_of"]] == "t0" and "'shipping'" in conflict["detail"] and "'billing'" in conflict["detail"]
    assert [name[i] for i in kept.filter(pl.col("label_conflict"))["id"]] == ["t0"]
    manifest = json.loads((tmp_path / "flag.parquet.manifest.json").read_text())
    assert manifest["parameters"]["fields_used"] == ["user"]
    assert manifest["counts"]["dropped_label_conflict"] == 1 and manifest["counts"]["label_conflict_flagged"] == 1

    _curate("dedup", data, "--method", "exact", "--label-conflicts", "drop", "-o", tmp_path / "drop.parquet")
    assert [name[i] for i in pl.read_parquet(tmp_path / "drop.parquet")["id"]] == ["t2", "t4"]
    _curate("dedup", data, "--method", "exact", "--label-conflicts", "ignore", "-o", tmp_path / "ignore.parquet")
    assert set(pl.read_parquet(tmp_path / "ignore.parquet.drops.parquet")["reason"]) == {"exact_duplicate"}


def test_numbers_keep_two_short_rows_apart_by_default(tmp_path):
    data, name = _classification(tmp_path, [("What is 2 + 3?", "5"), ("What is 4 + 5?", "9"), ("what is 2 + 3", "5")])
    _curate("dedup", data, "--method", "exact", "--method", "near", "-o", tmp_path / "kept.parquet")
    assert [name[i] for i in pl.read_parquet(tmp_path / "kept.parquet")["id"]] == ["t0", "t1"]  # case and "?" do not count, numbers do


def test_normalization_is_a_setting_with_the_old_matching_reachable(tmp_path):
    data, name = _classification(tmp_path, ROWS)
    _curate("dedup", data, "--method", "exact", "--normalize", "lower", "--fields", "user,label", "-o", tmp_path / "old.parquet")
    assert pl.read_parquet(tmp_path / "old.parquet").height == 5  # "refund." != "refund", "settings." != "settings!"
    _curate("dedup", data, "--method", "exact", "--fields", "user,label", "--label-conflicts", "ignore", "-o", tmp_path / "new.parquet")
    assert [name[i] for i in pl.read_parquet(tmp_path / "new.parquet")["id"]] == ["t0", "t1", "t2", "t4"]
    proc = subprocess.run([CURATE, "dedup", str(data), "--normalize", "lower,stemming", "-o", str(tmp_path / "x.parquet")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "stemming" in proc.stderr and "--normalize" in proc.stderr


def test_a_row_with_nothing_to_compare_passes_through_in_place(tmp_path):
    data, name = _classification(tmp_path, [("Where is my order?", "shipping"), ("", "technical"),
                                            ("", "billing"), ("where is my order", "shipping")])
    proc = _curate("dedup", data, "--method", "exact", "-o", tmp_path / "kept.parquet")
    assert [name[i] for i in pl.read_parquet(tmp_path / "kept.parquet")["id"]] == ["t0", "t1", "t2"]  # the two empty rows are no one's copy
    assert "2 row(s) have no text in fields user and were not compared" in proc.stderr.replace("\n", " ")

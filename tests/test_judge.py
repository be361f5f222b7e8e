"""`curate score --judge`: the real vLLM engine judges real records; scores are stored per row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

CURATE = str(Path(sys.executable).parent / "curate")


@pytest.mark.slow
def test_judge_scores_every_row_and_checks_labels(tmp_path):
    rows = [
        {"text": "I was charged twice for my subscription this month.", "label": "billing"},
        {"text": "The app crashes when I open the settings page.", "label": "technical"},
        {"text": "I forgot my password and the reset link does not work.", "label": "account"},
        {"text": "My parcel has not arrived after two weeks.", "label": "shipping"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "scored.parquet"
    log = tmp_path / "library.log"
    proc = subprocess.run([CURATE, "score", str(src), "--judge", "--labels", "billing,technical,account,shipping",
                           "-o", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SMALLSET_LOG_FILE": str(log)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A quiet console: vLLM's start-up output (its engine process's too) is in the log, not on the terminal.
    assert "vLLM engine for" in log.read_text() and "safetensors" in log.read_text()
    assert "safetensors" not in proc.stderr and "Warning" not in proc.stderr.replace("warning:", "")
    scored = pl.read_parquet(out)
    assert scored.height == 4
    for name in ("correctness", "helpfulness", "format"):
        assert scored[f"judge_{name}"].null_count() == 0  # structured output: every answer parsed
        assert scored[f"judge_{name}"].is_between(1, 5).all()
    mean = scored.select(pl.mean_horizontal("judge_correctness", "judge_helpfulness", "judge_format")).to_series()
    assert (scored["judge_score"] - mean).abs().max() < 1e-9
    assert set(scored["judge_label"]) <= {"billing", "technical", "account", "shipping"}
    assert scored["judge_agrees"].to_list() == [a == b for a, b in zip(scored["judge_label"], scored["label"])]
    manifest = json.loads((tmp_path / "scored.parquet.manifest.json").read_text())
    assert manifest["counts"]["unscored"] == 0
    assert manifest["parameters"]["usage"]["requests"] == 8  # one score and one label request per row


def test_rubric_names_must_be_simple(tmp_path):
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("'not ok!': is it fine?\n")
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"prompt": "a", "completion": "b"}))
    proc = subprocess.run([CURATE, "score", str(src), "--judge", "--rubric", str(rubric), "-o", str(tmp_path / "o.parquet")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "simple names" in proc.stderr
    assert not (tmp_path / "o.parquet").exists()

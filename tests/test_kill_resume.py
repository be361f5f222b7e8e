"""kill -9 of `smallset run` at seeded random moments: the rerun's outputs equal an uninterrupted run's, with no
process, temporary or stale sidecar left (issue #17). Two moments here; `benchmarks/kill_resume.py` runs twenty."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kill_resume  # noqa: E402


def test_killed_runs_resume_to_the_same_outputs(tmp_path):
    results = kill_resume.sweep(moments=2, seed=3, work=tmp_path)
    assert len(results) == 2
    assert any(r["killed"] for r in results)  # at least one kill landed mid-run (the moments are seeded)

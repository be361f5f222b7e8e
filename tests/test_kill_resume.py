"""kill -9 of `smallset run` at seeded random moments: the rerun's outputs equal an uninterrupted run's, with no
process, temporary or stale sidecar left (issue #17). Two moments here; `benchmarks/kill_resume.py` runs twenty."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Loaded by path: putting benchmarks/ on sys.path would let benchmarks/synth.py shadow the synth package.
_SPEC = importlib.util.spec_from_file_location("kill_resume", Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume.py")
kill_resume = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(kill_resume)


def test_killed_runs_resume_to_the_same_outputs(tmp_path):
    results = kill_resume.sweep(moments=2, seed=3, work=tmp_path)
    assert len(results) == 2
    assert any(r["killed"] for r in results)  # at least one kill landed mid-run (the moments are seeded)

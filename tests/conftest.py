"""Shared helpers: the real `curate` console script, and tiny input files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CURATE = Path(sys.executable).parent / "curate"


def run_curate(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the installed `curate` script; returns the finished process (stdout/stderr as text)."""
    return run_curate_many([args])[0]


def run_curate_many(calls: list) -> list[subprocess.CompletedProcess]:
    """Run several `curate` commands at once (each one starts in seconds: run them side by side)."""
    procs = [
        subprocess.Popen([str(CURATE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in calls
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value per line (rows need not be objects: bad input is written this way too)."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return ([{"role": "system", "content": system}] if system else []) + turns

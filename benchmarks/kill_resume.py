"""Fault injection: SIGKILL `smallset run` at seeded random moments, run it again, compare with an uninterrupted run.

For each moment the runner alone is killed (its stage commands must die with it), the same
command is run again to the end, and then:

* every stage's output has the same rows in the same order (ids) as the uninterrupted run's,
  and the same drops (id, reason);
* no process of the killed run is left (nothing whose command line names its run folder);
* no temporary is left in the run folder, and every output agrees with its manifest and drops
  (`curate.lineage` refuses a mix of two runs).

    python benchmarks/kill_resume.py --moments 20 --seed 0

The recipe is the bundled help-desk export through every curation step (`--until select`: no
training), so that one run takes about a minute here. tests/test_kill_resume.py runs two moments.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SMALLSET = Path(sys.executable).parent / "smallset"
EXAMPLES = ROOT / "recipes" / "examples"
UNTIL = "select"
STAGES = ("merge", "dedup", "decontaminate", "filter", "check-labels", "select")

RECIPE = f"""\
name: kill-resume
objective:
  task: classification
  metric: accuracy
  labels: [billing, technical, account, shipping]
  target: {{value: 0.5}}
data:
  real:
    - path: {EXAMPLES / 'helpdesk_export.jsonl'}
      map: {{text: description, label: category}}
      source: helpdesk
  test: {EXAMPLES / 'support_tickets_test.jsonl'}
curate:
  - dedup: {{method: [exact, near, semantic]}}
  - decontaminate: {{}}
  - filter: {{min-tokens: 4}}
  - check-labels: {{}}
  - select: {{}}
train: {{epochs: 1}}
"""


def write_recipe(folder: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def run(recipe: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([str(SMALLSET), "run", str(recipe), "--run-dir", str(run_dir), "--until", UNTIL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(recipe: Path, run_dir: Path) -> float:
    t0 = time.perf_counter()
    proc = run(recipe, run_dir)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"the run in {run_dir} failed:\n{err}")
    return time.perf_counter() - t0


def outputs(run_dir: Path) -> dict[str, tuple]:
    """Per stage: the output's ids in order, and its drops as sorted (id, reason) pairs."""
    found = {}
    for stage in STAGES:
        out = run_dir / "merge" / "all.parquet" if stage == "merge" else run_dir / stage / f"{stage}.parquet"
        drops = out.with_name(f"{out.name}.drops.parquet")
        found[stage] = (
            tuple(pl.read_parquet(out, columns=["id"])["id"].to_list()),
            tuple(sorted(pl.read_parquet(drops, columns=["id", "reason"]).iter_rows())) if drops.exists() else (),
        )
    return found


def leftovers(run_dir: Path) -> list[str]:
    """Processes whose command line names the run folder (the killed run's stage commands)."""
    mine, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == mine:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(run_dir) in cmdline and state not in ("Z", "X"):
            found.append(f"{entry}: {cmdline[:160]}")
    return found


def check_unit(run_dir: Path) -> None:
    from curate.lineage import steps

    temporaries = [p for p in run_dir.rglob(".*") if p.suffix in (".tmp", ".old")]
    assert not temporaries, f"temporaries left: {temporaries}"
    steps(run_dir / UNTIL / f"{UNTIL}.parquet")  # raises where an output and its manifest or drops disagree


def trial(recipe: Path, run_dir: Path, moment_s: float, reference: dict) -> dict:
    """Kill the run `moment_s` seconds in, run it again, check; what happened, for the report."""
    proc = run(recipe, run_dir)
    time.sleep(moment_s)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while (left := leftovers(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "processes of the killed run still alive 30 s later:\n" + "\n".join(left)
    finish(recipe, run_dir)
    check_unit(run_dir)
    got = outputs(run_dir)
    for stage in STAGES:
        assert got[stage] == reference[stage], f"stage {stage} differs from the uninterrupted run after a kill at {moment_s:.1f} s"
    return {"moment_s": round(moment_s, 2), "killed": killed}


def sweep(moments: int, seed: int, work: Path) -> list[dict]:
    recipe = write_recipe(work)
    reference_dir = work / "reference"
    length = finish(recipe, reference_dir)
    reference = outputs(reference_dir)
    rng = random.Random(seed)
    results = []
    for i in range(moments):
        moment = rng.uniform(0.5, length)
        results.append(trial(recipe, work / f"trial-{i}", moment, reference))
        print(f"moment {i + 1}/{moments}: killed at {moment:.1f} s of {length:.1f} s: identical, nothing left",
              flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moments", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        results = sweep(args.moments, args.seed, Path(tmp))
    killed = sum(r["killed"] for r in results)
    print(f"{len(results)} moments ({killed} killed mid-run): every output identical to the uninterrupted run, "
          "no process left, no temporary, no stale sidecar")


if __name__ == "__main__":
    main()

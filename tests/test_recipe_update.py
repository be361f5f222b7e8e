"""The update loop on the real stack, as a user runs it month after month.

A small recipe (24 of the bundled hand-written tickets, one epoch) runs with the bundled update
example (`recipes/examples/support_tickets_update.csv`: tickets about the new mobile app and the
Pocket Scanner, with its own hand-written test set). The update is killed with SIGKILL while its
candidate trains and run again; its candidate, warm-started from the first adapter, is promoted.
A second update brings 40 other tickets whose labels are all wrong (each moved to the next label:
what a mistaken annotation guideline gives): its candidate, honestly trained on them, is refused
and the current adapter stays. Every version is kept; the run report shows the history.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from curate.readers import read_records

ROOT = Path(__file__).resolve().parent.parent
SMALLSET = Path(sys.executable).parent / "smallset"
EXAMPLES = ROOT / "recipes" / "examples"
NEW = EXAMPLES / "support_tickets_update.csv"
NEW_TEST = EXAMPLES / "support_tickets_update_test.jsonl"
LABELS = ["billing", "technical", "account", "shipping"]
TOLERANCE = 25.0  # points: 16 test rows give paired intervals about 30 points wide


def _smallset(*args: str, timeout: int = 1500) -> str:
    proc = subprocess.run([str(SMALLSET), "run", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "250"})  # one console line per stage
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _state(folder: Path) -> dict:
    path = folder / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("update")
    with open(EXAMPLES / "support_tickets.csv", newline="") as fh:
        tickets = list(csv.DictReader(fh))
    by_label: dict[str, list] = {}
    for t in tickets:
        by_label.setdefault(t["category"], []).append(t)
    first = [t for rows in by_label.values() for t in rows[:6]]  # 24 tickets, 6 per label
    wrong = [{**t, "category": LABELS[(LABELS.index(t["category"]) + 1) % 4]}  # 40 others, every label wrong
             for rows in by_label.values() for t in rows[6:16]]
    for name, rows in (("tickets.csv", first), ("mislabelled.csv", wrong)):
        with open(root / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(tickets[0]))
            writer.writeheader()
            writer.writerows(rows)
    test_rows = (EXAMPLES / "support_tickets_test.jsonl").read_text().splitlines()
    (root / "test.jsonl").write_text("\n".join(test_rows[::3]) + "\n")  # 16 of the 48 held-out tickets
    (root / "mislabelled_test.jsonl").write_text("\n".join(test_rows[1::3]) + "\n")  # 16 others, for that batch
    recipe = {
        "name": "update-check",
        "objective": {"task": "classification", "metric": "accuracy", "labels": LABELS, "target": {"value": 0.5}},
        "data": {"real": [{"path": "tickets.csv", "map": {"text": "body", "label": "category"}}], "test": "test.jsonl"},
        "curate": [{"dedup": {"method": ["exact"]}}],
        "train": {"epochs": 1, "lr": 1.0e-3, "max-length": 96},
        "eval": {"max-model-len": 512, "latency-rows": 0, "counterfactual": False},
        "monitor": {"warm-start": True, "tolerance": TOLERANCE},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run = root / "run"
    good = [str(path), "--run-dir", str(run), "--update", str(NEW), "--test", str(NEW_TEST)]

    # The recipe, then the update; killed (SIGKILL, as by the OOM killer) while the candidate trains.
    proc = subprocess.Popen([str(SMALLSET), "run", *good], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and proc.poll() is None:
        if _state(run / "versions" / "2").get("stages", {}).get("train", {}).get("status") == "running":
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the update's training began"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = {"root": root, "run": run, "recipe": path, "killed_state": _state(run / "versions" / "2")}
    found["resumed"] = _smallset(*good)
    found["bad"] = [str(path), "--run-dir", str(run), "--update", str(root / "mislabelled.csv"),
                    "--test", str(root / "mislabelled_test.jsonl")]
    found["refused"] = _smallset(*found["bad"])
    return found


def _version(loop: dict, n: int) -> dict:
    return json.loads((loop["run"] / "versions" / str(n) / "version.json").read_text())


def _current(loop: dict) -> int:
    return json.loads((loop["run"] / "current.json").read_text())["version"]


@pytest.mark.slow
def test_a_killed_update_continues_where_it_stopped(loop):
    assert loop["killed_state"]["stages"]["train"]["status"] == "running"
    lines = loop["resumed"].splitlines()
    for stage in ("new", "drift", "dedup", "decontaminate", "data"):
        assert any(f"] {stage}" in line and "(done, skipped)" in line for line in lines), loop["resumed"]
    assert any("] train" in line and "(resuming)" in line for line in lines), loop["resumed"]
    assert all(e["status"] == "done" for e in _state(loop["run"] / "versions" / "2")["stages"].values())


@pytest.mark.slow
def test_a_better_adapter_is_promoted(loop):
    v2 = _version(loop, 2)
    assert v2["status"] == "promoted" and v2["parent"] == 1 and _current(loop) == 2
    old, new = v2["checks"]
    assert (old["test"], new["test"]) == ("test-v1", "test-v2") and new["new"] and not old["new"]
    assert new["candidate"]["value"] > new["current"]["value"]  # better on the new kind of request
    assert old["difference"]["low"] >= -TOLERANCE
    report = json.loads((loop["run"] / "versions" / "2" / "eval" / "eval.json").read_text())
    assert set(report["test_sets"]) == {"test-v1", "test-v2"} and set(report["results"]) >= {"adapter", "current"}
    assert old["candidate"]["value"] == report["test_sets"]["test-v1"]["results"]["adapter"]["accuracy"]
    assert v2["drift"]["drift"] is True  # a new kind of request: the batch drifted from the training set
    manifest = json.loads((loop["run"] / "versions" / "2" / "train" / "adapter.manifest.json").read_text())
    assert manifest["parameters"]["init_adapter"].endswith("versions/1/train/adapter")  # warm-started
    v1 = json.loads((loop["run"] / "versions" / "1" / "train" / "adapter.manifest.json").read_text())
    assert manifest["metrics"]["base_val_loss"] < v1["metrics"]["base_val_loss"]  # it starts where v1 ended, not at the base
    said = " ".join(loop["resumed"].split())
    assert "version 2 promoted: promoted: " in said and "better on the new test set test-v2 (16 rows)" in said


@pytest.mark.slow
def test_a_worse_adapter_is_refused_and_the_current_one_stays(loop):
    v3 = _version(loop, 3)
    assert v3["status"] == "refused" and v3["parent"] == 2 and _current(loop) == 2
    assert set(v3["tests"]) == {"test-v1", "test-v2", "test-v3"}
    old = next(c for c in v3["checks"] if c["test"] == "test-v1")
    assert old["candidate"]["value"] < old["current"]["value"]  # trained on wrong labels, it got worse
    assert not all(c["passed"] for c in v3["checks"])
    assert v3["reason"].startswith("kept the current adapter: ")
    assert "version 3 refused: kept the current adapter" in " ".join(loop["refused"].split())


@pytest.mark.slow
def test_every_version_is_kept(loop):
    versions = loop["run"] / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["1", "2", "3"]
    for n in (1, 2, 3):
        folder = versions / str(n)
        assert (folder / "train" / "adapter" / "adapter_config.json").is_file()
        assert (folder / "eval" / "eval.json").is_file() and (folder / "version.json").is_file()
    rows = {n: read_records(versions / str(n) / "data" / "train.parquet").records.height for n in (1, 2, 3)}
    assert rows[1] == 24
    for n in (2, 3):  # the parent's training set and the new rows that passed curation
        v = _version(loop, n)
        parent = rows[v["parent"]]
        assert rows[n] == v["rows"]["training"] == parent + v["rows"]["kept"]
        assert 0 < v["rows"]["kept"] <= v["rows"]["new"] == 40
    assert (versions / "2" / "inputs" / "1" / NEW.name).read_bytes() == NEW.read_bytes()  # its data kept with it


@pytest.mark.slow
def test_the_report_shows_the_history(loop):
    html = (loop["run"] / "report.html").read_text()
    section = html[html.index('id="history"'):]
    assert "<td>promoted (current)</td>" in section and "<td>refused</td>" in section
    assert "accuracy: test-v2" in section and "accuracy: test-v3" in section
    v2 = _version(loop, 2)
    assert f"drift (AUC {v2['drift']['auc']:.2f})" in section
    first = section[section.index("<tr><td>1</td>"):]
    first = first[: first.index("</tr>")]  # version 1 on the newer test set, as update 2 measured it
    assert f"{v2['current']['test-v2']['value'] * 100:.1f}%" in first
    assert _version(loop, 3)["reason"].replace("'", "&#x27;") in section


@pytest.mark.slow
def test_the_same_update_again_runs_nothing(loop):
    out = _smallset(*loop["bad"], timeout=600)
    assert "0 stage(s) ran" in out and "version 3 refused" in out
    assert sorted(p.name for p in (loop["run"] / "versions").iterdir()) == ["1", "2", "3"]


def test_monitor_options_are_checked_before_anything_runs(tmp_path):
    from curate.errors import InputError
    from recipes.spec import load_recipe
    from recipes.stages import plan
    from recipes.update import check_monitor, update_steps

    (tmp_path / "examples").mkdir()
    for name in ("support_tickets.csv", "support_tickets_test.jsonl"):
        (tmp_path / "examples" / name).write_bytes((EXAMPLES / name).read_bytes())
    recipe = yaml.safe_load((ROOT / "recipes" / "support_tickets.yaml").read_text())
    recipe["data"].pop("synth")
    recipe.pop("monitor")  # the bundled one names its own steps for a batch
    path = tmp_path / "recipe.yaml"
    for monitor, message in (({"tolerence": 5}, "monitor.tolerence"), ({"tolerance": -1}, "monitor.tolerance"),
                             ({"curate": ["dedupe"]}, "unknown step 'dedupe'")):
        path.write_text(yaml.safe_dump({**recipe, "monitor": monitor}))
        with pytest.raises(InputError, match=message):
            load_recipe(path)
    path.write_text(yaml.safe_dump({**recipe, "monitor": {"drift": {"max-acu": 0.7}}}))
    loaded = load_recipe(path)
    with pytest.raises(InputError, match="field 'monitor.drift.max-acu'"):
        check_monitor(loaded, plan(loaded, tmp_path / "run"), tmp_path / "run")
    # A new batch is curated by the recipe's steps but select, decontaminated against what is trained on already.
    path.write_text(yaml.safe_dump({**recipe, "curate": [{"dedup": {}}, {"select": {"size": 10}}]}))
    assert [name for name, _ in update_steps(load_recipe(path))] == ["dedup", "decontaminate"]
    proc = subprocess.run([str(SMALLSET), "run", str(path), "--update", str(NEW)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--update NEW_DATA and --test NEW_TEST go together" in proc.stderr


@pytest.mark.slow
def test_a_warm_start_from_an_adapter_of_another_rank_is_refused(loop, tmp_path):
    first = loop["run"] / "versions" / "1"
    proc = subprocess.run([str(SMALLSET.parent / "train"), "lora", str(first / "data" / "train.parquet"), "-o",
                           str(tmp_path / "lora"), "--init-adapter", str(first / "train"), "--rank", "8", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has rank 16, this run 8: give --rank 16" in proc.stderr

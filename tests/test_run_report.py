"""The run report of a finished run folder, as a person reads it in headless Chromium.

The folder is built by the run's own stage commands (real `curate` runs on real files);
only the two stages that need a model are stood in for: the teacher's rows are ingested
with the source `synth generate` gives them, and eval.json carries the objective's
verdict as `train.objective` computes it. The report must put the training set's
synthetic share and the audit's verdicts beside the objective's verdict, compare labels
of every candidate row with the training set (real and synthetic apart), and draw no
chart of a column that is constant or a rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, write_jsonl
from curate.records import CORE_COLUMNS
from recipes.report import write_run_report
from recipes.runner import Context
from recipes.spec import load_recipe
from recipes.stages import plan
from test_recipe_run import LABELS, TICKETS  # tests/ is on the path, as pytest puts it there
from train.objective import Objective

ROOT = Path(__file__).resolve().parents[1]
CURATE = Path(sys.executable).parent / "curate"
REAL = [*TICKETS, ("Win a free cruise now", "spam")]  # the end-to-end run's tickets, and one the filter drops
SYNTHETIC = [
    ("My card was billed for a plan I never ordered.", "billing"),
    ("The sync button does nothing on iOS.", "technical"),
    ("I want two-factor login on my account.", "account"),
    ("My order was sent to my old address.", "shipping"),
    ("Why did my annual renewal cost more than last year?", "billing"),
    ("Uploading a photo freezes the editor.", "technical"),
    ("Please merge my two accounts into one.", "account"),
    ("The courier left my package at the wrong door.", "shipping"),
]
RECIPE = """\
name: report-tickets
objective: {{task: classification, metric: accuracy, labels: [{labels}], target: {{value: 0.25}}}}
data:
  real: [{{path: tickets.csv, map: {{text: body, label: category}}}}]
  synth: {{task: {task}, options: {{num: 4}}}}
  test: test.jsonl
curate:
  - dedup: {{method: [exact]}}
  - filter: {{allowed-labels: [{labels}]}}
  - select: {{size: 14}}
train: {{}}
eval: {{}}
"""
MODEL_STAGES = ("synth", "train", "eval", "report")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    (folder / "tickets.csv").write_text("body,category\n" + "".join(f'"{t}",{label}\n' for t, label in REAL),
                                        encoding="utf-8")
    write_jsonl(folder / "teacher.jsonl", [{"text": t, "label": label} for t, label in SYNTHETIC])
    write_jsonl(folder / "test.jsonl", [{"text": "Where is my order?", "label": "shipping"},
                                        {"text": "Refund my last payment.", "label": "billing"}])
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(RECIPE.format(labels=", ".join(LABELS), task=ROOT / "recipes" / "tasks" / "support_tickets.yaml"),
                           encoding="utf-8")
    recipe = load_recipe(recipe_path)
    run_dir = folder / "run"
    stages = plan(recipe, run_dir)
    by_name = {s.name: s for s in stages}
    for stage in stages:
        if stage.name in MODEL_STAGES:
            continue
        stage.folder.mkdir(parents=True, exist_ok=True)
        for cmd in stage.commands:
            _run(cmd)
        if stage.name == "real":  # the teacher's rows, as `synth generate` labels them
            synth = by_name["synth"]
            synth.folder.mkdir(parents=True, exist_ok=True)
            _run([str(CURATE), "ingest", str(folder / "teacher.jsonl"), "-o", str(synth.output),
                  "--source", "synth:support-tickets"])
    results = {"base": {"accuracy": 0.25}, "kshot": {"accuracy": 0.5}, "adapter": {"accuracy": 1.0}}
    (run_dir / "eval").mkdir()
    evaluation = {"results": results, "objective": Objective.parse("accuracy", "0.25").verdict(results)}
    (run_dir / "eval" / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    state = {"stages": {s.name: {"status": "done", "seconds": float(n)} for n, s in enumerate(stages, 1)}}
    report = write_run_report(Context(recipe, run_dir, stages, state, print), run_dir / "report.html")
    return {"run_dir": run_dir, "report": report, "training_set": by_name["train"].inputs[0],
            "candidates": by_name["merge"].output, "stages": stages}


@pytest.fixture(scope="module")
def page(finished):
    from playwright import sync_api

    assert CHROMIUM, "Debian's chromium is not installed: run `make browser` (`make test` does)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        view = browser.new_page()
        view.goto(finished["report"].as_uri())
        yield view
        browser.close()


def _beside_verdict(page) -> list[str]:
    """The text of every element after the verdict up to the next heading: what a reader sees next to it."""
    return page.evaluate("""() => {
        const out = []; let el = document.getElementById('verdict').nextElementSibling;
        while (el && el.tagName !== 'H2') { out.push(el.innerText); el = el.nextElementSibling; }
        return out; }""")


def _origin(df: pl.DataFrame) -> pl.Series:
    return pl.Series(["synthetic" if s.startswith("synth:") else "real" for s in df["source"]])


def test_the_synthetic_share_stands_beside_the_verdict(finished, page):
    assert "PASS" in page.locator("#verdict").inner_text()
    training = pl.read_parquet(finished["training_set"])
    synthetic = int((_origin(training) == "synthetic").sum())
    assert 0 < synthetic < training.height  # the selection kept some of the teacher's rows, not all
    expected = f"{training.height} rows, {synthetic} synthetic ({synthetic / training.height:.1%})"
    assert expected in page.locator("#synthetic-share").inner_text()
    beside = "\n".join(_beside_verdict(page))
    assert expected in beside


def test_the_audit_verdicts_stand_beside_the_verdict(finished, page):
    beside = "\n".join(_beside_verdict(page))
    for key in ("fidelity", "privacy"):
        assert page.locator(f"#{key}-verdict").inner_text() in beside
    found = json.loads((finished["run_dir"] / "audit" / "audit.json").read_text())  # as `curate audit --json` wrote it
    for key in ("fidelity", "privacy"):
        shown = page.locator(f"#{key}-verdict").inner_text()
        assert found[key]["verdict"].upper() in shown and found[key]["verdict"] != "not run"
        assert all(reason in shown for reason in found[key]["reasons"])


def test_the_audit_runs_on_the_training_set_against_the_real_rows_before_training(finished):
    names = [s.name for s in finished["stages"]]
    assert names.index("audit") == names.index("train") - 1
    audit = next(s for s in finished["stages"] if s.name == "audit")
    command = audit.commands[0]
    assert command[1:3] == ["audit", str(finished["training_set"])]
    assert command[command.index("--against") + 1] == str(finished["run_dir"] / "real" / "real.parquet")
    assert command[command.index("--compare") + 1] == "synthetic"  # real rows in the set are REAL's own


def test_labels_compare_every_candidate_with_the_training_set_real_and_synthetic_apart(finished, page):
    labels = page.locator("h2", has_text="Labels before and after").locator("xpath=following-sibling::table[1]")
    header = labels.locator("th").all_inner_texts()
    assert header == ["label", "all candidates: real", "all candidates: synthetic", "training set: real",
                      "training set: synthetic"]
    shown = {row[0]: [int(x) for x in row[1:]] for row in
             (r.locator("td").all_inner_texts() for r in labels.locator("tbody tr").all())}
    expected: dict[str, list[int]] = {}
    for k, path in enumerate((finished["candidates"], finished["training_set"])):
        df = pl.read_parquet(path)
        for label, origin in zip(df["label"], _origin(df)):
            counts = expected.setdefault(label, [0, 0, 0, 0])
            counts[2 * k + (origin == "synthetic")] += 1
    assert shown == expected
    assert shown["spam"] == [1, 0, 0, 0]  # a candidate the filter dropped still counts before
    assert sum(v[1] for v in shown.values()) == len(SYNTHETIC)  # every teacher row among the candidates


def test_no_chart_of_a_constant_column_or_a_rank(finished, page):
    training = pl.read_parquet(finished["training_set"])
    numeric = [c for c, t in training.schema.items() if c not in CORE_COLUMNS and t.is_numeric()]
    charts = set(page.locator("img").evaluate_all("imgs => imgs.map(i => i.alt)"))
    constant = [c for c in numeric if training[c].n_unique() == 1]
    assert constant and "select_rank" in numeric  # the run has both kinds, so the test means something
    for column in numeric:
        assert (column in charts) == (column not in constant and column != "select_rank"), column
    assert all(f"{c} = {training[c][0]}" in page.content() for c in constant)  # said once in words instead

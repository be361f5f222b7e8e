"""A small recipe end to end on the real stack, the way a user runs it.

`smallset run` synthesizes tickets with the vLLM teacher, curates them with real
tickets, pushes the synthetic ones to a real Argilla server that the run starts
itself, and stops to wait for people. An annotator answers in the Argilla web UI
(headless Chromium); the next run is killed while it trains and started again; it
resumes the adapter, evaluates it through vLLM with LoRA and writes the report,
which headless Chromium opens. A third run skips every stage.

Everything runs once, in a module fixture; the tests read what it left behind. Every
component is the real one (vLLM, the Argilla server, models, files, the browser): the
annotator signs in and decides in the Argilla web UI, as a person does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.drops import read_drops
from curate.manifest import manifest_path
from curate.readers import read_records
from conftest import annotator_page, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
SMALLSET = Path(sys.executable).parent / "smallset"
CURATE = Path(sys.executable).parent / "curate"
LABELS = ["billing", "technical", "account", "shipping"]

TICKETS = [
    ("I was charged twice this month, please refund one payment.", "billing"),
    ("My invoice lists the wrong plan.", "billing"),
    ("Can I pay by bank transfer instead of card?", "billing"),
    ("The app crashes when I open the reports tab.", "technical"),
    ("Export to CSV gives an empty file.", "technical"),
    ("The page shows error 500 after login.", "technical"),
    ("I cannot reset my password, the email never comes.", "account"),
    ("Please change the email address on my account.", "account"),
    ("How do I delete my account and my data?", "account"),
    ("My parcel has been in transit for two weeks.", "shipping"),
    ("The box arrived damaged, what now?", "shipping"),
    ("Can you ship to Norway?", "shipping"),
]
TEST = [
    ("Why was my card charged after I cancelled?", "billing"),
    ("The dashboard does not load in Firefox.", "technical"),
    ("I want to add a second admin to my account.", "account"),
    ("Where is my order? The tracking number does not work.", "shipping"),
]

RECIPE = """\
name: e2e-tickets
objective:
  task: classification
  metric: accuracy
  labels: [billing, technical, account, shipping]
  target: {{value: 0.25}}
data:
  real:
    - path: tickets.csv
      map: {{text: body, label: category}}
  synth:
    task: {task}
    options: {{num: 4}}
  test: test.jsonl
curate:
  - dedup: {{method: [exact]}}
  - filter: {{allowed-labels: [billing, technical, account, shipping]}}
review:
  wait: true
  workspace: review-ws
  port: {port}
  push: {{route: synthetic, vectors: false}}
train: {{epochs: 3, batch-size: 2, micro-batch-size: 2, eval-every: 2, patience: 20}}
eval: {{k: 4}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smallset(recipe: Path, run_dir: Path) -> str:
    """`smallset run`, its stdout and stderr (where progress goes) as one text."""
    proc = subprocess.run([str(SMALLSET), "run", str(recipe), "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1800, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _answer_as_annotator(workspace: Path, dataset_name: str) -> dict[str, str]:
    """An annotator (created with the CLI) decides on every record in the Argilla web UI: all accepted but the first.

    The decisions are made in headless Chromium, as a person makes them: the tickets are
    classification rows, so the label is preselected, Submit accepts and Discard rejects.
    The SDK only reads back which record got which decision, for the tests to compare with the run.
    """
    from curate.review.client import connect
    from curate.review.pull import fetch_records

    added = subprocess.run([str(CURATE), "review", "users", "add", "ann", "--workspace", str(workspace)],
                           capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip().splitlines()[-1]
    conn = connect(workspace)
    dataset = conn.client.datasets(dataset_name, workspace="smallset")
    pushed = len(list(dataset.records))
    assert pushed, "the run pushed nothing"
    with annotator_page(conn.url, "ann", password, workspace.parent / "failure.png") as page:
        page.get_by_text(dataset_name, exact=True).click()  # the dataset card on the home page
        page.wait_for_url("**/dataset/*/annotation-mode**")
        for i in range(pushed):
            page.get_by_text(f"{i + 1} of {pushed}").wait_for()
            page.get_by_text("Discard" if i == 0 else "Submit", exact=True).click()

    def decided(record) -> list[str]:  # the UI saves drafts as you click: only submitted and discarded answers count
        statuses = [getattr(r.status, "value", r.status) for r in record.responses or []]
        return [{"submitted": "accept", "discarded": "reject"}[s] for s in statuses if s in ("submitted", "discarded")]

    decisions: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(decisions) < pushed and time.monotonic() < deadline:  # the last submit may still be on its way
        time.sleep(0.5)
        answers = {ext: decided(record) for ext, record in fetch_records(conn, dataset).items()}
        decisions = {ext: values[0] for ext, values in answers.items() if values}
    return decisions


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "tickets.csv").write_text(
        "body,category\n" + "".join(f'"{text}",{label}\n' for text, label in TICKETS), encoding="utf-8")
    write_jsonl(folder / "test.jsonl", [{"text": text, "label": label} for text, label in TEST])
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(task=ROOT / "recipes" / "tasks" / "support_tickets.yaml", port=_free_port()),
                      encoding="utf-8")
    run_dir = folder / "run"
    workspace = folder / "review-ws"
    found: dict = {"run_dir": run_dir}
    try:
        found["first"] = _smallset(recipe, run_dir)
        found["state_after_first"] = _state(run_dir)
        found["decisions"] = _answer_as_annotator(workspace, "e2e-tickets")

        # The second run is killed (SIGKILL, as by the OOM killer) once training has saved a checkpoint.
        proc = subprocess.Popen([str(SMALLSET), "run", str(recipe), "--run-dir", str(run_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline and proc.poll() is None:
            train = _state(run_dir).get("stages", {}).get("train", {})
            if train.get("status") == "running" and (run_dir / "train" / "checkpoints" / "last").exists():
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the second run ended (code {proc.returncode}) before training checkpointed"
        proc.kill()
        proc.wait()
        found["state_after_kill"] = _state(run_dir)

        found["third"] = _smallset(recipe, run_dir)
        found["fourth"] = _smallset(recipe, run_dir)
        yield found
    finally:
        subprocess.run([str(CURATE), "review", "stop", "--workspace", str(workspace)], capture_output=True, timeout=120)


def test_first_run_pushes_the_synthetic_rows_and_waits(run):
    stages = run["state_after_first"]["stages"]
    assert [name for name, entry in stages.items() if entry["status"] == "done"][:2] == ["real", "synth"]
    assert stages["review"]["status"] == "waiting"
    assert "train" not in stages
    assert "waiting for review" in run["first"]
    assert "Annotate them there" in run["first"]
    synth = read_records(run["run_dir"] / "synth" / "synth.parquet").records
    assert synth.height == 4
    assert len(run["decisions"]) == 4  # route: synthetic sends exactly the teacher's rows


def test_killed_run_resumes_training_and_finishes(run):
    train = run["state_after_kill"]["stages"]["train"]
    assert train["status"] == "running"  # the kill left it unfinished...
    assert any("train" in line and "(resuming)" in line for line in run["third"].splitlines()), run["third"]
    stages = _state(run["run_dir"])["stages"]
    assert all(entry["status"] == "done" for entry in stages.values()), stages
    manifest = json.loads(manifest_path(run["run_dir"] / "train" / "adapter").read_text())
    assert manifest["metrics"]["resumed_from_step"] > 0  # ...and the next run went on from its checkpoint
    assert (run["run_dir"] / "train" / "adapter" / "adapter_config.json").exists()


def test_review_decisions_shape_the_training_set(run):
    rejected = [ext for ext, decision in run["decisions"].items() if decision == "reject"]
    accepted = read_records(run["run_dir"] / "review" / "accepted.parquet").records
    drops = read_drops(run["run_dir"] / "review" / "accepted.parquet")
    assert drops["reason"].to_list() == ["review_rejected"]
    assert [f"e2e-tickets:{i}" for i in drops["id"].to_list()] == rejected
    assert rejected[0].split(":", 1)[1] not in accepted["id"].to_list()
    curated = read_records(run["run_dir"] / "filter" / "filter.parquet").records
    assert accepted.height == curated.height - 1
    summary = json.loads((run["run_dir"] / "review" / "review.json").read_text())
    assert summary["routed"] == 4 and summary["outcomes"] == {"accepted": 3, "rejected": 1}


def test_evaluation_scores_three_systems_and_the_report_shows_the_verdict(run):
    evaluation = json.loads((run["run_dir"] / "eval" / "eval.json").read_text())
    for system in ("base", "kshot", "adapter"):
        assert evaluation["results"][system]["rows"] == len(TEST)
        assert 0.0 <= evaluation["results"][system]["accuracy"] <= 1.0
    passed = evaluation["objective"]["passed"]
    assert passed == (evaluation["results"]["adapter"]["accuracy"] >= 0.25)

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it)"
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={run['run_dir'] / 'chromium'}", "--dump-dom",
         (run["run_dir"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    verdict = dom[dom.index('id="verdict"'):]
    verdict = verdict[: verdict.index("</p>")]
    assert ("PASS" if passed else "FAIL") in verdict
    assert "accuracy" in verdict
    beside = dom[dom.index('id="synthetic-share"'):]
    assert "15 rows, 3 synthetic (20.0%)" in beside[:200]  # 12 real and 4 generated, 1 rejected in review
    assert 'id="fidelity-verdict"' in beside and 'id="privacy-verdict"' in beside  # the audit stage's verdicts
    for section in ("Review", "Evaluation"):
        assert section in dom


def test_rerun_skips_every_stage(run):
    assert "0 stage(s) ran" in run["fourth"]
    stages = _state(run["run_dir"])["stages"]
    assert f"{len(stages)} skipped" in run["fourth"]

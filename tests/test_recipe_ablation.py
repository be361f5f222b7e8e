"""A recipe with `eval: {ablate: [select]}`, run for real: the variant shares the main run's stages up
to the step it leaves out, trains its own adapter, and the one evaluation scores both against one
k-shot baseline, with a paired interval for the difference; the report says what the step did.

Real tickets (a share of the bundled hand-written ones), the real trainer, the real vLLM engine.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.spec import load_recipe
from recipes.stages import plan

ROOT = Path(__file__).resolve().parent.parent
SMALLSET = Path(sys.executable).parent / "smallset"


@pytest.fixture(scope="module")
def ablated(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ablate")
    with open(ROOT / "recipes" / "examples" / "support_tickets.csv", newline="") as fh:
        tickets = list(csv.DictReader(fh))
    by_label: dict[str, list] = {}
    for t in tickets:
        by_label.setdefault(t["category"], []).append(t)
    chosen = [t for rows in by_label.values() for t in rows[:10]]  # 40 real tickets, 10 per label
    with open(root / "tickets.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(tickets[0]))
        writer.writeheader()
        writer.writerows(chosen)
    test_rows = (ROOT / "recipes" / "examples" / "support_tickets_test.jsonl").read_text().splitlines()
    (root / "test.jsonl").write_text("\n".join(test_rows[::3]) + "\n")  # 16 of the 48 held-out tickets
    recipe = {
        "name": "ablation-check",
        "objective": {"task": "classification", "metric": "accuracy",
                      "labels": ["billing", "technical", "account", "shipping"], "target": {"value": 0.5}},
        "data": {"real": [{"path": "tickets.csv", "map": {"text": "body", "label": "category"}}], "test": "test.jsonl"},
        "curate": [{"dedup": {"method": ["exact"]}}, {"select": {"size": 16}}],
        "train": {"epochs": 1, "lr": 1.0e-3, "max-length": 96},
        "eval": {"max-model-len": 1024, "ablate": ["select"]},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = root / "run"
    proc = subprocess.run([str(SMALLSET), "run", str(path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "recipe": path, "run": run_dir, "proc": proc,
            "eval": json.loads((run_dir / "eval" / "eval.json").read_text())}


@pytest.mark.slow
def test_the_variant_shares_the_stages_before_the_step_it_leaves_out(ablated):
    run = ablated["run"]
    variant = run / "ablate" / "no-select"
    assert (variant / "train" / "adapter" / "adapter_config.json").is_file()
    assert not (variant / "dedup").exists() and not (variant / "real").exists()  # shared with the main run
    main_rows = json.loads((run / "train" / "adapter.manifest.json").read_text())["counts"]["rows_in"]
    variant_rows = json.loads((variant / "train" / "adapter.manifest.json").read_text())["counts"]["rows_in"]
    assert main_rows == 16 and variant_rows == 40  # select kept 16; without it, every deduplicated row
    state = json.loads((run / "run.json").read_text())["stages"]
    assert state["no-select:train"]["status"] == "done"


@pytest.mark.slow
def test_one_evaluation_scores_both_against_one_kshot_baseline(ablated):
    report = ablated["eval"]
    assert set(report["results"]) == {"base", "kshot", "adapter", "no-select"}
    assert report["usage"]["requests"] == 4 * report["rows"]
    assert report["shots_from"].endswith("real.parquet")  # the run's declared pool: the real rows
    diff = report["differences"]["no-select-adapter"]["accuracy"]
    full, variant = report["results"]["adapter"]["accuracy"], report["results"]["no-select"]["accuracy"]
    assert diff["value"] == pytest.approx(variant - full)
    assert diff["low"] <= diff["value"] <= diff["high"] and diff["level"] == 0.95
    assert report["objective"]["interval"]["low"] <= full <= report["objective"]["interval"]["high"]


@pytest.mark.slow
def test_the_report_says_what_the_step_did(ablated):
    html = (ablated["run"] / "report.html").read_text()
    assert "Ablations: what each step did to the objective" in html and "without select" in html
    diff = ablated["eval"]["differences"]["no-select-adapter"]["accuracy"]
    effect = -diff["value"] * 100
    words = "no clear effect" if not diff["significant"] else ("select helped" if effect > 0 else "select hurt")
    assert words in html
    assert f"{effect:+.1f}" in html


@pytest.mark.slow
def test_a_second_run_skips_every_stage(ablated):
    proc = subprocess.run([str(SMALLSET), "run", str(ablated["recipe"]), "--run-dir", str(ablated["run"])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 stage(s) ran" in proc.stdout + proc.stderr


def test_curve_runs_before_a_select_without_a_size(tmp_path):
    """A recipe with a learning curve and `select` without a size: select takes the curve's knee."""
    shutil.copytree(ROOT / "recipes" / "examples", tmp_path / "examples")
    recipe = yaml.safe_load((ROOT / "recipes" / "bring_your_own.yaml").read_text())
    recipe["curate"][-1] = {"select": {}}
    recipe["eval"] = {"curve": {"sizes": "10,20,all"}, "ablate": ["dedup"]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    stages = plan(load_recipe(path), tmp_path / "run")
    names = [s.name for s in stages]
    assert names.index("curve") == names.index("select") - 1
    select = stages[names.index("select")].commands[0]
    curve_json = str(stages[names.index("curve")].output)
    assert select[select.index("--size") + 1] == "auto" and select[select.index("--curve") + 1] == curve_json
    assert select[select.index("--metric") + 1] == "macro_f1"  # the objective's metric decides the label mix
    variant_select = stages[names.index("no-dedup:select")].commands[0]
    assert variant_select[variant_select.index("--curve") + 1] == curve_json  # one curve for every variant
    evaluation = stages[names.index("eval")].commands[0]
    assert f"no-dedup={tmp_path / 'run' / 'ablate' / 'no-dedup' / 'train'}" in evaluation
    assert evaluation[evaluation.index("--shots-from") + 1] == str(tmp_path / "run" / "real" / "real.parquet")


def test_ablate_names_a_step_of_the_recipe(tmp_path):
    from curate.errors import InputError

    shutil.copytree(ROOT / "recipes" / "examples", tmp_path / "examples")
    recipe = yaml.safe_load((ROOT / "recipes" / "bring_your_own.yaml").read_text())
    recipe["eval"] = {"ablate": ["check-labels"]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(InputError, match="'check-labels' is not a step or source of this recipe"):
        load_recipe(path)


def test_a_variant_takes_the_main_runs_review_decisions(tmp_path):
    """Rejected and pending rows are left out, corrections applied, unseen rows routed as the policy says."""
    import polars as pl

    from curate.readers import read_records
    from curate.writers import write_records
    from recipes.review_stage import apply_decisions
    from recipes.stages import Stage

    def row(text, label, source, outcome=None, record=True):
        meta = json.dumps({"review": {"record": f"k:{text}"}} if record else {})
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}],
                "label": label, "source": source, "meta": meta, "review_outcome": outcome}

    pulled_rows = [row("accepted one", "billing", "synth:t", "accepted"), row("rejected one", "billing", "synth:t", "rejected"),
                   row("corrected one", "shipping", "synth:t", "corrected"), row("pending one", "billing", "synth:t", "pending")]
    raw = pl.DataFrame(pulled_rows).with_columns(pl.lit("x").alias("id"))
    ids = {r["messages"][0]["content"]: f"id-{i}" for i, r in enumerate(pulled_rows)}
    pulled = raw.with_columns(pl.Series("id", list(ids.values())))
    write_records(pulled, tmp_path / "pulled.parquet")
    variant_rows = [{**r, "label": "billing", "review_outcome": None, "meta": "{}"} for r in pulled_rows] + [
        row("never seen, generated", "account", "synth:t", record=False),
        row("never seen, real", "account", "tickets", record=False)]
    variant = pl.DataFrame(variant_rows).with_columns(
        pl.Series("id", [*ids.values(), "id-unseen-synth", "id-unseen-real"])).drop("review_outcome")
    write_records(variant, tmp_path / "variant.parquet")
    stage = Stage("no-x:review", tmp_path / "out" / "accepted.parquet", [tmp_path / "variant.parquet", tmp_path / "pulled.parquet"],
                  params={"decisions": str(tmp_path / "pulled.parquet"), "push": {"route": "synthetic"}}, kind="decisions")
    (tmp_path / "out").mkdir()
    apply_decisions(stage)
    kept = read_records(stage.output).records
    assert sorted(kept["id"].to_list()) == ["id-0", "id-2", "id-unseen-real"]
    assert kept.filter(pl.col("id") == "id-2")["label"].item() == "shipping"  # the correction, not the variant's label
    from curate.drops import read_drops

    drops = read_drops(stage.output)
    assert dict(zip(drops["id"], drops["reason"])) == {"id-1": "review_rejected", "id-3": "review_pending",
                                                       "id-unseen-synth": "review_pending"}

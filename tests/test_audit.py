"""`curate audit` on planted faults in a real corpus, through the installed console script and the packaged embedder.

The corpus is `tests/corpus.py` (docstrings labelled by the module they document). Planted: one
label eight times commoner than the others, "she" in rows of one label only, a synth axis value
the teacher never wrote, a text with two labels, and copies of REAL's rows among synthetic ones.
Controls that must not be flagged: an even label mix, "he" spread over every label, and a
synthetic set drawn from REAL's own distribution (a held-out half of the corpus).
"""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
from conftest import run_curate_many, write_jsonl
from corpus import docstring_corpus

from curate.audit import AuditConfig, audit
from curate.records import CORE_SCHEMA, with_ids
from synth.coverage import plan
from synth.generate import seed_audit
from synth.task import load_task

TASK = "recipes/tasks/support_tickets.yaml"
MISSING_PERSONA = "a developer"


def _planted(rows: list[dict], per_label: int, heavy: str | None, she_label: str | None) -> list[dict]:
    """`per_label` rows of each label (8x as many of `heavy`), "he" in one row of each label, "she" in 8 of one."""
    out = []
    for label in sorted({r["label"] for r in rows}):
        group = [dict(r) for r in rows if r["label"] == label][: per_label * (8 if label == heavy else 1)]
        group[0]["text"] = "As he noted, " + group[0]["text"]
        if label == she_label:
            for r in group[1:9]:
                r["text"] = "She wrote: " + r["text"]
        out += group
    return out


def _synthetic(rows: list[dict]) -> list[dict]:
    """Records as `synth generate` writes them, over the ticket task's axes, with one persona never written."""
    task = load_task(TASK)
    out = []
    for axes, row in zip(plan(task.axes, 64, seed=0), rows):
        if axes["persona"] == MISSING_PERSONA:
            continue
        meta = {"synth": {"task": task.name, "strategy": "taxonomy", "axes": axes}}
        out.append({"messages": [{"role": "user", "content": row["text"]}, {"role": "assistant", "content": axes["label"]}],
                    "label": axes["label"], "source": f"synth:{task.name}", "meta": json.dumps(meta)})
    twin = dict(out[1], label="other" if out[1]["label"] != "other" else "billing")
    twin["messages"] = [out[1]["messages"][0], {"role": "assistant", "content": twin["label"]}]
    return out + [twin]  # one text, two labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("audit")
    rows = docstring_corpus()
    random.Random(0).shuffle(rows)
    real, rest = rows[: len(rows) // 2], rows[len(rows) // 2:]
    files = {
        "real": write_jsonl(tmp / "real.jsonl", real),
        "heldout": write_jsonl(tmp / "heldout.jsonl", rest),
        "copies": write_jsonl(tmp / "copies.jsonl", [dict(r) for r in real[:40]] + rest[:40]),
        "planted": write_jsonl(tmp / "planted.jsonl", _planted(rest, 9, heavy="files", she_label="time")),
        "even": write_jsonl(tmp / "even.jsonl", _planted(rest, 9, heavy=None, she_label=None)),
        "synth": write_jsonl(tmp / "synth.jsonl", _synthetic(rest)),
        "broken": tmp / "broken.jsonl",
        "terms": tmp / "terms.yaml",
        "bad_terms": tmp / "bad_terms.yaml",
    }
    files["broken"].write_text('{"text": "fine", "label": "a"}\n{"text": "no end\n', encoding="utf-8")
    files["terms"].write_text("animals: [[cat, dog]]\n", encoding="utf-8")
    files["bad_terms"].write_text("gender: [[she, she]]\n", encoding="utf-8")

    def call(name: str, data: str, *extra) -> list:
        return [name, ["audit", files[data], "--json", tmp / f"{name}.json", "-o", tmp / f"{name}.html", *extra]]

    first = [call("heldout", "heldout", "--against", files["real"], "--fail-on", "fidelity", "--fail-on", "privacy")]
    others = [
        call("copies", "copies", "--against", files["real"], "--fail-on", "privacy"),
        call("own_rows", "real", "--against", files["real"], "--compare", "synthetic", "--fail-on", "privacy"),
        call("planted", "planted", "--strict"),
        call("even", "even", "--fail-on", "imbalance", "--fail-on", "association"),
        call("custom_terms", "planted", "--terms", files["terms"]),
        call("synth", "synth", "--task-spec", TASK, "--slices", "source", "--fail-on", "coverage"),
        call("missing_field", "even", "--slices", "persona"),
        call("unreadable", "broken"),
        call("bad_terms", "even", "--terms", files["bad_terms"]),
    ]
    procs = run_curate_many([c[1] for c in first]) + run_curate_many([c[1] for c in others])  # the first fills the cache
    out = {"files": files}
    for (name, _), proc in zip(first + others, procs):
        path = tmp / f"{name}.json"
        out[name] = {"proc": proc, "report": json.loads(path.read_text()) if path.exists() else None,
                     "html": (tmp / f"{name}.html").read_text() if (tmp / f"{name}.html").exists() else None}
    return out


def _findings(run: dict) -> set[str]:
    return {f["finding"] for f in run["report"]["findings"]}


def test_imbalance_and_identity_term_association_are_flagged(runs):
    run = runs["planted"]
    assert run["proc"].returncode == 3, run["proc"].stderr  # --strict: any finding
    report = run["report"]
    assert {"imbalance", "association"} <= _findings(run)
    assert report["labels"]["imbalance_ratio"] == pytest.approx(8.0)
    flagged = [e for e in report["associations"]["terms"] if e["flag"]]
    assert [(e["term"], e["group"], e["label"]) for e in flagged] == [("she", "gender", "time")]
    she = flagged[0]
    assert she["rows"] == she["term_rows"] == 8 and she["npmi"] > 0.5 and she["p_value"] < 0.01
    assert all(x.startswith("She wrote:") for x in she["examples"])
    he = [e for e in report["associations"]["terms"] if e["term"] == "he"]
    assert len(he) == 7 and not any(e["flag"] for e in he)  # one row per label: no association
    assert "'she' (gender) with label 'time'" in run["proc"].stderr
    assert run["html"].count("data:image/png") >= 2 and "Identity terms and labels" in run["html"]


def test_even_mix_and_spread_terms_are_not_flagged(runs):
    run = runs["even"]
    assert run["proc"].returncode == 0, run["proc"].stderr
    assert not {"imbalance", "association"} & _findings(run)
    assert run["report"]["labels"]["imbalance_ratio"] == 1.0


def test_terms_file_replaces_the_default_list(runs):
    report = runs["custom_terms"]["report"]
    assert runs["custom_terms"]["proc"].returncode == 0  # no --fail-on
    assert report["associations"]["terms_source"].endswith("terms.yaml")
    assert report["associations"]["terms"] == [] and "association" not in _findings(runs["custom_terms"])


def test_missing_axis_value_and_label_conflict_are_flagged(runs):
    run = runs["synth"]
    assert run["proc"].returncode == 3, run["proc"].stderr
    report = run["report"]
    assert {"coverage", "label_conflicts"} <= _findings(run)
    persona = next(s for s in report["coverage"]["slices"] if s["field"] == "support-tickets: persona")
    assert persona["target_source"] == "task spec"
    by_value = {v["value"]: v for v in persona["values"]}
    assert by_value[MISSING_PERSONA]["rows"] == 0 and by_value[MISSING_PERSONA]["under"]
    assert by_value[MISSING_PERSONA]["target_share"] == pytest.approx(0.25)
    assert [v for v in by_value.values() if v["under"]] == [by_value[MISSING_PERSONA]]
    label = next(s for s in report["coverage"]["slices"] if s["field"] == "support-tickets: label")
    assert not label["flag"]
    assert report["label_conflicts"]["texts"] == 1 and len(report["label_conflicts"]["examples"][0]["labels"]) == 2
    assert report["duplicates"]["exact"] == 0  # the twin is a conflict, not a duplicate
    assert report["data"]["synthetic_rows"] == report["data"]["rows"]


def test_copies_of_real_rows_fail_privacy(runs):
    run = runs["copies"]
    assert run["proc"].returncode == 3, run["proc"].stderr
    privacy = run["report"]["privacy"]
    assert privacy["verdict"] == "fail" and privacy["baseline"]
    copies = privacy["copies"]
    assert copies["synthetic"] >= 40 and copies["excess"] > 0.1 and copies["p_value"] < 0.01
    assert privacy["dcr"]["too_close_share"] > 0.15
    assert privacy["dcr"]["synthetic_median_vs_rest"] < privacy["dcr"]["holdout_median"]
    assert copies["examples"][0]["cosine_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert "Privacy: distance to the closest real record" in run["html"]


def test_a_training_set_of_reals_own_rows_is_not_taken_for_copies(runs):
    """A recipe's training set without synthetic rows is REAL's own rows: with --compare synthetic (what the
    recipe's audit stage passes) there is nothing to measure, where "auto" would call every row a copy."""
    run = runs["own_rows"]
    assert run["proc"].returncode == 0, run["proc"].stderr
    report = run["report"]
    assert report["data"]["synthetic_rows"] == 0 and not {"fidelity", "privacy"} & _findings(run)
    for key in ("fidelity", "privacy"):
        assert report[key]["verdict"] == "not run" and "no synthetic row" in report[key]["reasons"][0]


def test_a_set_from_reals_own_distribution_passes_fidelity_and_privacy(runs):
    run = runs["heldout"]
    assert run["proc"].returncode == 0, run["proc"].stderr
    report = run["report"]
    assert report["fidelity"]["verdict"] == "pass" and report["privacy"]["verdict"] == "pass"
    assert report["fidelity"]["checks"]["classifier"]["value"] < 0.65
    privacy = report["privacy"]
    assert abs(privacy["copies"]["excess"]) < 0.05  # real rows have near-copies of their own (str/bytes methods)
    assert privacy["dcr"]["too_close_share"] < 0.15
    assert 0.8 < privacy["dcr"]["ratio"] < 1.25
    assert privacy["pii"]["replayed"] == 0


@pytest.mark.parametrize("name, needle", [
    ("missing_field", "field 'persona': no row has a column or meta key 'persona'"),
    ("unreadable", "broken.jsonl, line 2"),
    ("bad_terms", "bad_terms.yaml, field 'gender.0'"),
])
def test_bad_input_is_a_clean_error(runs, name, needle):
    proc = runs[name]["proc"]
    assert proc.returncode == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert runs[name]["report"] is None


def test_synth_generate_manifest_summary_flags_copied_seeds():
    """What `synth generate` puts in its manifest (`parameters.audit`) for records that copy the task's seeds."""
    task = load_task(TASK)

    def records(texts: list[tuple[str, str]]) -> pl.DataFrame:
        rows = [{"id": "", **task.output.render({"text": t, "label": lab}), "source": f"synth:{task.name}", "meta": "{}"}
                for t, lab in texts]
        return with_ids(pl.DataFrame(rows, schema=CORE_SCHEMA))

    fresh = [("My invoice lists a plan I never ordered.", "billing"), ("Uploads stall at 99% in Firefox.", "technical"),
             ("I cannot change the e-mail address on my profile.", "account"),
             ("The courier left my parcel at the wrong address.", "shipping")] * 2
    copied = [(s["text"], s["label"]) for s in task.seeds]
    leaky, clean = seed_audit(records(fresh + copied), task), seed_audit(records(fresh), task)
    assert leaky["privacy"]["verdict"] == "fail" and leaky["privacy"]["copies"]["synthetic"] == len(copied)
    assert clean["privacy"]["verdict"] == "pass" and clean["privacy"]["copies"]["synthetic"] == 0
    assert {"verdict", "reasons", "checks"} <= set(clean["fidelity"])


def test_in_process_audit_without_labels_skips_label_sections(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i} about {w}"},
                          {"role": "assistant", "content": f"an answer on {w}"}], "label": None,
             "source": "chat", "meta": "{}", "id": ""} for i, w in enumerate(["ships", "trains", "planes", "cars"])]
    report = audit(with_ids(pl.DataFrame(rows, schema=CORE_SCHEMA)), None, AuditConfig())
    assert report.figures["labels"] is None and report.figures["associations"]["skipped"] == "no row has a label"
    assert report.figures["fidelity"]["verdict"] == "not run" and not report.figures["flagged"]

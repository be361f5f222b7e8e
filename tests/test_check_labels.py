"""curate check-labels through the real CLI: the bundled hand-labelled tickets plus planted bad rows, and a real
corpus (Python docstrings by module, tests/corpus.py) as it is and with planted label flips."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import run_curate, run_curate_many, write_jsonl
from corpus import docstring_corpus, flip_labels
from curate.drops import read_drops
from curate.label_check import LabelCheckConfig, decide
from curate.manifest import read_manifest
from curate.review.routing import Route, route

CURATE = str(Path(sys.executable).parent / "curate")
TICKETS = Path(__file__).resolve().parents[1] / "recipes" / "examples" / "support_tickets.csv"

# Generated rows, as a weak teacher writes them: right, wrong, and off the task.
RIGHT = [
    ("We were billed for 12 seats but only have 9 people on the team, please credit the difference.", "billing"),
    ("After the last update the desktop app freezes whenever I drag a file into a project.", "technical"),
    ("I need to hand over the owner role of our workspace to my colleague before I leave.", "account"),
    ("The courier left my parcel at the wrong house and the tracking page says delivered.", "shipping"),
]
WRONG = [  # the label says one thing, the text plainly another
    ("Please refund the second charge on my credit card, I was billed twice this month.", "shipping"),
    ("My order still has not been delivered and the tracking number shows no movement for a week.", "billing"),
    ("I forgot my password and the reset link in the email has already expired.", "technical"),
]
OFF_TASK = [
    ("We had a lovely picnic by the lake and the ducks stole half of our sandwiches.", "billing"),
    ("In a world where dreams are painted in colours, every sunrise tells a story of hope.", "account"),
]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CURATE, *args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """The 120 real tickets (source support_tickets) and 9 generated rows (source synth)."""
    tmp = tmp_path_factory.mktemp("labels")
    run("ingest", str(TICKETS), "--map", "text=body", "--map", "label=category", "--source", "support_tickets",
        "-o", str(tmp / "real.parquet"))
    synth = tmp / "synth.jsonl"
    synth.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in RIGHT + WRONG + OFF_TASK))
    run("ingest", str(synth), "--source", "synth", "-o", str(tmp / "synth.parquet"))
    run("ingest", str(tmp / "real.parquet"), str(tmp / "synth.parquet"), "-o", str(tmp / "all.parquet"))
    return tmp / "all.parquet"


def _text(df: pl.DataFrame) -> list[str]:
    return [m[0]["content"] for m in df["messages"].to_list()]


def test_generated_rows_are_held_to_the_trusted_labels(mixed, tmp_path):
    out = tmp_path / "checked.parquet"
    run("check-labels", str(mixed), "--trusted", "source = 'support_tickets'", "--method", "predicted_neq_given",
        "--min-quality", "0.4", "-o", str(out))
    kept, drops = pl.read_parquet(out), read_drops(out)
    all_rows = pl.read_parquet(mixed)
    by_text = dict(zip(_text(all_rows), all_rows["id"].to_list()))

    # Every wrong and every off-task row goes, with its reason; every right row and every trusted row stays.
    assert set(drops["id"]) == {by_text[t] for t, _ in WRONG + OFF_TASK}
    assert set(_text(kept)) >= {t for t, _ in RIGHT}
    assert kept.filter(pl.col("source") == "support_tickets").height == 120
    wrong = drops.filter(pl.col("id") == by_text[WRONG[0][0]]).row(0, named=True)
    assert wrong["reason"] == "label_issue" and wrong["step"] == "check-labels"
    assert "'shipping' but reads as 'billing'" in wrong["detail"]
    assert set(drops["reason"]) <= {"label_issue", "low_label_quality"}

    # label_quality is the probability of the row's own label: high for the right rows.
    quality = dict(zip(_text(kept), kept["label_quality"].to_list()))
    assert all(0.4 <= quality[t] <= 1 for t, _ in RIGHT)
    assert kept["label_quality"].null_count() == 0
    manifest = read_manifest(out)
    counts = manifest["counts"]
    assert counts["in"] == 129 and counts["out"] == 129 - len(WRONG) - len(OFF_TASK)
    # auto with trusted rows is drop: every suspect goes, none is kept flagged.
    assert manifest["parameters"]["action"] == "auto" and manifest["parameters"]["action_taken"] == "drop"
    assert counts["flagged"] == 0 and not kept["label_issue"].any()
    assert not any(k.startswith("capped_") for k in counts)


def test_trusted_rows_with_action_flag_keep_what_is_not_strongly_contradicted(mixed, tmp_path):
    """--action flag overrides auto's drop: the same suspects, but only strong contradictions go."""
    out = tmp_path / "flagged.parquet"
    proc = run_curate("check-labels", mixed, "--trusted", "source = 'support_tickets'", "--method",
                      "predicted_neq_given", "--min-quality", "0.4", "--action", "flag", "-o", out)
    assert proc.returncode == 0, proc.stderr
    kept, drops = pl.read_parquet(out), read_drops(out)
    all_rows = pl.read_parquet(mixed)
    by_text = dict(zip(_text(all_rows), all_rows["id"].to_list()))
    suspects = {by_text[t] for t, _ in WRONG + OFF_TASK}
    flagged = set(kept.filter(pl.col("label_issue"))["id"])
    assert flagged | set(drops["id"]) == suspects and not flagged & set(drops["id"])
    _assert_justified(drops, LabelCheckConfig())
    assert kept.filter(pl.col("source") == "support_tickets").height == 120
    # A kept wrong row says what it reads as: the billing complaint filed under shipping.
    wrong = kept.filter(pl.col("id") == by_text[WRONG[0][0]])
    if wrong.height:
        assert wrong["label_issue"][0] and wrong["label_suggested"][0] == "billing"
    counts = read_manifest(out)["counts"]
    assert counts["flagged"] == len(flagged) and counts["dropped"] == drops.height


def test_without_trusted_rows_flipped_labels_are_found_out_of_fold(tmp_path):
    """No trusted rows: cross-validated predictions over all rows; three real tickets get a wrong label."""
    rows = pl.read_csv(TICKETS)
    flips = {40: "shipping", 60: "account", 100: "technical"}  # a billing, a technical and a shipping ticket
    assert [rows["category"][i] for i in flips] == ["billing", "technical", "shipping"]
    src = tmp_path / "flipped.jsonl"
    src.write_text("".join(json.dumps({"text": b, "label": flips.get(i, c)}) + "\n"
                           for i, (b, c) in enumerate(zip(rows["body"], rows["category"]))))
    out = tmp_path / "checked.parquet"
    run("check-labels", str(src), "-o", str(out))
    kept, drops = pl.read_parquet(out), read_drops(out)
    assert read_manifest(out)["parameters"]["action_taken"] == "flag"  # no trusted rows: auto flags
    caught = set(drops["id"]) | set(kept.filter(pl.col("label_issue"))["id"])
    ingested = tmp_path / "all.parquet"
    run("ingest", str(src), "-o", str(ingested))
    ids = pl.read_parquet(ingested)["id"].to_list()
    assert {ids[i] for i in flips} <= caught
    assert len(caught) <= 10  # a handful of honest rows at most, out of 120
    # A flipped ticket that is kept suggests the category it was written under.
    suggested = dict(zip(kept["id"], kept["label_suggested"]))
    for i in flips:
        if ids[i] in suggested:
            assert suggested[ids[i]] == rows["category"][i]


def test_a_label_the_trusted_rows_never_use_is_dropped(mixed, tmp_path):
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"text": "Where can I find the user manual for the scanner?", "label": "docs"}) + "\n")
    run("ingest", str(mixed), str(extra), "-o", str(tmp_path / "in.parquet"))
    out = tmp_path / "o.parquet"
    run("check-labels", str(tmp_path / "in.parquet"), "--trusted", "source = 'support_tickets'", "-o", str(out))
    drops = read_drops(out)
    unknown = drops.filter(pl.col("reason") == "label_unknown")
    assert unknown.height == 1 and "'docs'" in unknown["detail"][0]


@pytest.mark.parametrize("args, message", [
    (["--trusted", "source = 'nowhere'"], "no labelled row matches the trusted condition"),
    (["--trusted", "no_such_column = 1"], "cannot be evaluated on this dataset"),
    (["--min-quality", "1.5"], "outside (0, 1]"),
    (["--action", "purge"], "Invalid value for '--action'"),
    (["--max-class-drop", "1.5"], "Invalid value for '--max-class-drop'"),
    (["--strong-given", "-0.1"], "Invalid value for '--strong-given'"),
])
def test_bad_options_say_what_is_wrong_and_write_nothing(mixed, tmp_path, args, message):
    out = tmp_path / "o.parquet"
    proc = run("check-labels", str(mixed), *args, "-o", str(out), ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not out.exists() and not (tmp_path / "o.parquet.drops.parquet").exists()


# --------------------------------------------------------------------------- a real corpus, clean and with flips

DETAIL = re.compile(r"\(p=(?P<top>[\d.]+) >= (?P<q>[\d.]+); p\(.+\)=(?P<given>[\d.]+) <= (?P<g>[\d.]+)\)$")


def _assert_justified(drops: pl.DataFrame, config: LabelCheckConfig) -> None:
    """Every strong drop shows p(given) <= strong_given and p(likeliest) >= strong_predicted."""
    for row in drops.iter_rows(named=True):
        assert row["reason"] == "label_contradicted", row
        match = DETAIL.search(row["detail"])
        assert match, row["detail"]
        assert float(match["top"]) >= config.strong_predicted and float(match["given"]) <= config.strong_given
        assert row["similarity"] <= config.strong_given  # the drops table's similarity is p(given)


def _lost_per_class(ids: list[str], labels: list[str], drops: pl.DataFrame) -> dict[str, tuple[int, int]]:
    """label -> (rows of the class, rows dropped)."""
    label_of = dict(zip(ids, labels))
    lost = Counter(label_of[i] for i in drops["id"])
    return {lab: (n, lost[lab]) for lab, n in Counter(labels).items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The docstring corpus as it is and with 15% planted flips, ingested, and check-labels run on both."""
    tmp = tmp_path_factory.mktemp("corpus")
    rows = docstring_corpus()
    flipped, flips = flip_labels(rows, 0.15)
    sets = {"clean": rows, "flipped": flipped}
    for name, data in sets.items():
        proc = run_curate("ingest", write_jsonl(tmp / f"{name}.jsonl", data), "-o", tmp / f"{name}.parquet")
        assert proc.returncode == 0, proc.stderr
    runs = {
        "clean": ("clean", []),
        "clean_strict": ("clean", ["--method", "predicted_neq_given"]),
        "flipped": ("flipped", []),
        "flipped_capped": ("flipped", ["--max-class-drop", "0.02"]),
    }
    first, *rest = runs.items()  # the first run fills the embedding cache; the rest read it side by side
    procs = {}
    for batch in ([first], rest):
        done = run_curate_many([["check-labels", tmp / f"{src}.parquet", *args, "-o", tmp / f"{name}.out.parquet"]
                                for name, (src, args) in batch])
        procs.update({name: proc for (name, _), proc in zip(batch, done)})
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    ids = {name: pl.read_parquet(tmp / f"{name}.parquet")["id"].to_list() for name in sets}
    return {"tmp": tmp, "rows": rows, "flipped": flipped, "flips": flips, "ids": ids, "procs": procs,
            "labels": {name: [r["label"] for r in data] for name, data in sets.items()}}


def _outputs(corpus: dict, name: str) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    out = corpus["tmp"] / f"{name}.out.parquet"
    return pl.read_parquet(out), read_drops(out), read_manifest(out)


@pytest.mark.parametrize("name", ["clean", "clean_strict"])
def test_clean_labels_lose_only_justified_rows_and_no_class_beyond_the_cap(corpus, name):
    kept, drops, manifest = _outputs(corpus, name)
    n = len(corpus["rows"])
    assert manifest["parameters"]["action_taken"] == "flag"
    _assert_justified(drops, LabelCheckConfig())
    assert drops.height <= 0.03 * n  # almost nothing goes from a clean set
    assert kept.height + drops.height == n
    for label, (rows, lost) in _lost_per_class(corpus["ids"]["clean"], corpus["labels"]["clean"], drops).items():
        assert lost <= math.floor(0.1 * rows), label
    # Suspects stay, marked, with the label they read as; the manifest counts them.
    flagged = kept.filter(pl.col("label_issue"))
    assert manifest["counts"]["flagged"] == flagged.height
    assert kept["label_issue"].null_count() == 0 and kept["label_suggested"].null_count() == 0
    if name == "clean_strict":  # predicted_neq_given suspects every row the classifier labels otherwise
        assert flagged.height > drops.height
        assert (flagged["label_suggested"] != flagged["label"]).all()
        assert f"flagged: {flagged.height}" in " ".join(corpus["procs"][name].stderr.split())


def test_flagged_rows_route_to_review_with_where_label_issue(corpus):
    """`review push --route filter --where label_issue` picks exactly the flagged rows (its routing, on the output)."""
    kept, _, _ = _outputs(corpus, "clean_strict")
    routed = route(kept, Route(policy="filter", where="label_issue"))
    assert routed.height > 0
    assert routed["id"].to_list() == kept.filter(pl.col("label_issue"))["id"].to_list()


def test_route_suspects_picks_flagged_conflicting_and_synthetic_rows(corpus):
    """`--route suspects` (a recipe's default) = rows check-labels flagged, dedup's label conflicts, synthetic rows."""
    kept, _, _ = _outputs(corpus, "clean_strict")
    flagged = set(kept.filter(pl.col("label_issue"))["id"])
    plain = kept.filter(~pl.col("label_issue"))["id"].to_list()
    conflict, synthetic = plain[0], plain[1]
    marked = kept.with_columns(
        label_conflict=pl.col("id") == conflict,
        source=pl.when(pl.col("id") == synthetic).then(pl.lit("synth:tickets")).otherwise(pl.col("source")))
    routed = route(marked, Route(policy="suspects"))
    assert set(routed["id"]) == flagged | {conflict, synthetic}
    assert routed["id"].to_list() == [i for i in marked["id"] if i in flagged | {conflict, synthetic}]  # dataset order
    # Without any flag column only synthetic rows are suspects.
    assert route(kept.drop("label_issue"), Route(policy="suspects")).height == 0


def test_planted_flips_are_caught_and_strong_drops_are_real_flips(corpus):
    kept, drops, manifest = _outputs(corpus, "flipped")
    ids, flips = corpus["ids"]["flipped"], corpus["flips"]
    flipped_ids = {ids[i] for i in flips}
    caught = set(drops["id"]) | set(kept.filter(pl.col("label_issue"))["id"])
    assert len(caught & flipped_ids) >= 0.7 * len(flipped_ids)
    assert drops.height > 0
    _assert_justified(drops, LabelCheckConfig())
    assert len(set(drops["id"]) & flipped_ids) >= 0.9 * drops.height  # strong drops are real flips
    # The suggestion of a caught flip is mostly the label it had before it was flipped.
    original = dict(zip(ids, corpus["labels"]["clean"]))
    kept_flips = kept.filter(pl.col("label_issue") & pl.col("id").is_in(list(flipped_ids)))
    right = sum(original[i] == s for i, s in zip(kept_flips["id"], kept_flips["label_suggested"]))
    assert right >= 0.5 * kept_flips.height
    assert manifest["counts"]["flagged"] == kept.filter(pl.col("label_issue")).height
    for label, (rows, lost) in _lost_per_class(ids, corpus["labels"]["flipped"], drops).items():
        assert lost <= math.floor(0.1 * rows), label


def test_the_cap_keeps_a_class_flagged_and_says_so_loudly(corpus):
    kept, drops, manifest = _outputs(corpus, "flipped_capped")
    _, default_drops, default = _outputs(corpus, "flipped")  # the same data under the default cap (10%)
    counts, stderr = manifest["counts"], " ".join(corpus["procs"]["flipped_capped"].stderr.split())
    capped = {k.removeprefix("capped_"): v for k, v in counts.items() if k.startswith("capped_")}
    assert capped and all(v > 0 for v in capped.values())
    ids, labels = corpus["ids"]["flipped"], corpus["labels"]["flipped"]
    lost = _lost_per_class(ids, labels, drops)
    lost_by_default = _lost_per_class(ids, labels, default_drops)
    for label, held in capped.items():
        rows, dropped = lost[label]
        assert dropped <= math.floor(0.02 * rows)
        # What a class would lose is the same under either cap: dropped plus held back.
        assert dropped + held == lost_by_default[label][1] + default["counts"].get(f"capped_{label}", 0)
        assert "warning:" in stderr and f"class '{label}' would lose {dropped + held} of its {rows} rows" in stderr
        assert f"kept the {held} with the weakest evidence" in stderr
    # Held-back rows are kept and flagged, never lost; the console line says how many.
    assert set(default_drops["id"]) - set(drops["id"]) <= set(kept.filter(pl.col("label_issue"))["id"])
    assert f"{sum(capped.values())} of them kept by the cap" in stderr
    assert manifest["parameters"]["max_class_drop"] == 0.02


def test_the_cap_drops_the_strongest_evidence_first():
    """decide(): a class of 10 may lose 1 row at 10%; of three strong suspects the lowest p(given) goes."""
    labels = ["a"] * 10 + ["b"] * 10
    suspected = np.zeros(20, dtype=bool)
    suspected[[1, 2, 3]] = True
    given = np.full(20, 0.9)
    given[[1, 2, 3]] = [0.04, 0.01, 0.03]
    top = np.full(20, 0.9)
    decision = decide(suspected, labels, np.zeros(20, dtype=bool), given, top, LabelCheckConfig())
    assert np.flatnonzero(decision.removed).tolist() == [2]
    assert np.flatnonzero(decision.flagged).tolist() == [1, 3]
    assert decision.capped == {"a": (10, 3, 1)}
    everything = decide(suspected, labels, np.zeros(20, dtype=bool), given, top, LabelCheckConfig(max_class_drop=1.0))
    assert np.flatnonzero(everything.removed).tolist() == [1, 2, 3] and not everything.capped

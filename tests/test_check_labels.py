"""curate check-labels on the bundled hand-labelled tickets plus planted bad rows, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.drops import read_drops
from curate.manifest import read_manifest

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
    counts = read_manifest(out)["counts"]
    assert counts["in"] == 129 and counts["out"] == 129 - len(WRONG) - len(OFF_TASK)


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
    drops = read_drops(out)
    flagged = set(drops["id"])
    ingested = tmp_path / "all.parquet"
    run("ingest", str(src), "-o", str(ingested))
    ids = pl.read_parquet(ingested)["id"].to_list()
    assert {ids[i] for i in flips} <= flagged
    assert len(flagged) <= 10  # a handful of honest rows at most, out of 120


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
])
def test_bad_options_say_what_is_wrong_and_write_nothing(mixed, tmp_path, args, message):
    out = tmp_path / "o.parquet"
    proc = run("check-labels", str(mixed), *args, "-o", str(out), ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not out.exists() and not (tmp_path / "o.drops.parquet").exists()

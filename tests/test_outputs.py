"""Outputs are safe: never written over an input, no leftovers of a killed writer, and an output never
told apart from its manifest and drops by a reader (issue #17, items 4 and 9)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curate.manifest import content_hash, manifest_path

ROOT = Path(__file__).resolve().parents[1]
CURATE = str(Path(sys.executable).parent / "curate")

ROWS = [{"prompt": f"How do I change setting number {i} of my account?", "completion": f"Open settings, then tab {i}."}
        for i in range(30)] + [{"prompt": "How do I change setting number 1 of my account?", "completion": "Open settings, then tab 1."}]


NEAR_ALL = ("--shingle", "char", "--ngram", "3", "--threshold", "0.5")
"""Near dedup loose enough to merge the numbered rows: another output than exact dedup's."""


def curate(*args, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def data(tmp_path) -> Path:
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "records.parquet"
    curate("ingest", raw, "-o", out)
    return out


@pytest.mark.parametrize("step", [
    ["dedup"], ["filter", "--min-tokens", "0", "--max-tokens", "0"], ["select", "--size", "5"],
    ["decontaminate", "--against", "{other}"], ["check-labels"],
])
def test_a_step_refuses_to_write_over_its_input_before_any_work(data, tmp_path, step):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "Something else entirely", "completion": "Yes."}) + "\n")
    before = content_hash(data)
    args = [a.replace("{other}", str(other)) for a in step]
    proc = curate(*args[:1], data, *args[1:], "-o", data, ok=False)
    assert str(data) in proc.stderr and "is also an input" in proc.stderr
    assert content_hash(data) == before
    # Writing over a side input (the evaluation set) is refused the same way.
    if step[0] == "decontaminate":
        target = tmp_path / "other.parquet"
        curate("ingest", other, "-o", target)
        proc = curate("decontaminate", data, "--against", target, "-o", target, ok=False)
        assert "is also an input" in proc.stderr


def test_ingest_refuses_to_write_over_a_raw_file(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    before = raw.read_bytes()
    proc = curate("ingest", raw, "-o", raw, ok=False)
    assert "is also an input" in proc.stderr and raw.read_bytes() == before
    # The same file by another spelling is still the input.
    proc = curate("ingest", raw, "-o", tmp_path / "." / "raw.jsonl", ok=False)
    assert raw.read_bytes() == before


def test_an_output_whose_parent_is_a_file_is_named_before_any_work(data, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = curate("dedup", data, "-o", blocker / "x.parquet", ok=False)
    assert "afile is a file, not a folder" in proc.stderr


def _writing(out: Path) -> subprocess.Popen:
    """A real process in the middle of an atomic write of `out` (it sleeps there until killed)."""
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from curate.atomic import atomic_path
        with atomic_path({str(out)!r}) as tmp:
            tmp.write_bytes(b"half a parquet file")
            print("writing", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def test_the_next_write_removes_what_a_killed_writer_left(data, tmp_path):
    """A real SIGKILL in the middle of an atomic write leaves a hidden temporary; the next run cleans it."""
    out = tmp_path / "deduped.parquet"
    writer = _writing(out)
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".deduped.parquet.")]
    assert leftovers and not out.exists()

    curate("dedup", data, "-o", out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deduped.parquet.") and p.suffix == ".tmp"]
    assert out.exists()


def test_a_live_writers_temporary_is_left_alone(data, tmp_path):
    out = tmp_path / "deduped.parquet"
    writer = _writing(out)
    try:
        curate("dedup", data, "-o", out)
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".deduped.parquet.")]
    finally:
        writer.kill()
        writer.wait(30)


def test_a_reader_refuses_an_output_that_does_not_match_its_manifest(data, tmp_path):
    """What a kill between renaming the output and writing its manifest leaves: new data, old manifest."""
    out = tmp_path / "deduped.parquet"
    curate("dedup", data, "--method", "exact", "-o", out)
    old_manifest, old_hash = manifest_path(out).read_bytes(), content_hash(out)
    curate("dedup", data, "--method", "exact", "--method", "near", *NEAR_ALL, "-o", out)
    assert content_hash(out) != old_hash  # the second run kept other rows
    manifest_path(out).write_bytes(old_manifest)

    for command in (["report", out, "-o", tmp_path / "report.html"], ["explain", "0", out]):
        proc = curate(*command, ok=False)
        assert "does not match its manifest" in proc.stderr and "run the command again" in proc.stderr
    assert not (tmp_path / "report.html").exists()

    curate("dedup", data, "--method", "exact", "-o", out)  # a whole run makes the unit whole again
    curate("report", out, "-o", tmp_path / "report.html")
    assert (tmp_path / "report.html").exists()


def test_a_drops_table_from_another_run_is_refused_too(data, tmp_path):
    out = tmp_path / "deduped.parquet"
    curate("dedup", data, "--method", "exact", "-o", out)
    drops = out.with_name("deduped.parquet.drops.parquet")
    saved = tmp_path / "saved.drops.parquet"
    shutil.copy(drops, saved)
    curate("dedup", data, "--method", "exact", "--method", "near", *NEAR_ALL, "-o", tmp_path / "b.parquet")
    shutil.copy(tmp_path / "b.parquet.drops.parquet", drops)  # a drops table that belongs to another output
    proc = curate("report", out, "-o", tmp_path / "r.html", ok=False)
    assert "deduped.parquet.drops.parquet" in proc.stderr and "does not match its manifest" in proc.stderr


def test_synth_generate_checks_its_output_before_the_engine_starts(tmp_path):
    """A wrong suffix used to fail after two minutes of generation, leaving a journal behind."""
    task = ROOT / "recipes" / "tasks" / "support_tickets.yaml"
    synth = str(Path(sys.executable).parent / "synth")
    proc = subprocess.run([synth, "generate", str(task), "-o", str(tmp_path / "out" / "x.csv")],
                          capture_output=True, text=True, timeout=60)  # no engine start: seconds, not minutes
    assert proc.returncode != 0 and "cannot write '.csv' files" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_two_formats_of_one_name_keep_their_own_manifests(data, tmp_path):
    """`-o out/x.parquet` and `-o out/x.jsonl` used to share out/x.manifest.json, and report refused the first."""
    out = tmp_path / "out"
    curate("dedup", data, "-o", out / "x.parquet")
    curate("dedup", data, "--method", "exact", "-o", out / "x.jsonl")
    assert manifest_path(out / "x.parquet") != manifest_path(out / "x.jsonl")
    assert {p.name for p in out.iterdir()} == {
        "x.parquet", "x.parquet.manifest.json", "x.parquet.drops.parquet",
        "x.jsonl", "x.jsonl.manifest.json", "x.jsonl.drops.parquet"}
    for name in ("x.parquet", "x.jsonl"):
        curate("report", out / name, "-o", tmp_path / f"{name}.html")
        assert (tmp_path / f"{name}.html").exists()


@pytest.mark.parametrize("command", [["lora", "{data}"], ["curve", "{data}", "--test", "{data}"],
                                     ["eval", "{data}", "--test", "{data}"], ["merge", "{data}"]])
def test_train_refuses_an_output_folder_that_is_a_file_before_loading_a_model(data, tmp_path, command):
    """`train lora -o FILE` used to fail with FileExistsError after the model had loaded."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    train = str(Path(sys.executable).parent / "train")
    args = [a.replace("{data}", str(data)) for a in command]
    for output in (blocker, blocker / "sub"):
        proc = subprocess.run([train, *args, "-o", str(output)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "is a file" in proc.stderr
    assert blocker.read_text() == "not a folder"

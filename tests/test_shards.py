"""Datasets as folders of Parquet shards, in and out (issue #16, item 2): what Ray, Spark or datatrove
write reads as one dataset, and a folder output appears whole, with one manifest and one drops table
beside it, never over a user's files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import docstring_corpus
from curate.manifest import content_hash, read_manifest
from curate.readers import read_records
from curate.shards import SchemaMismatch
from curate.writers import write_shards
from recipes.stages import digest

CURATE = str(Path(sys.executable).parent / "curate")


def curate(*args, ok: bool = True, rows_per_shard: int | str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if rows_per_shard is not None:
        env["SMALLSET_ROWS_PER_SHARD"] = str(rows_per_shard)
    proc = subprocess.run([CURATE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Real docstrings of several modules, plus exact copies of three of them for dedup to find."""
    base = docstring_corpus()[::8]
    return base + [dict(base[i]) for i in (3, 17, 41)]


def pyarrow_folder(folder: Path, rows: list[dict], names=("a.parquet", "b/c.parquet", "d.parquet")) -> list[list[dict]]:
    """`rows` as shards written by pyarrow (uneven, one in a subfolder), written out of order, with a
    Spark-style `_SUCCESS` and a hidden checksum beside them; returns the shards' rows in read order."""
    cuts = [0, len(rows) // 5, len(rows) // 2, len(rows)]
    parts = [rows[cuts[k]:cuts[k + 1]] for k in range(3)]
    for name, part in reversed(list(zip(names, parts))):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), folder / name)
    (folder / "_SUCCESS").write_text("")
    (folder / ".a.parquet.crc").write_bytes(b"\x00crc")
    (folder / "README.txt").write_text("exported by a cluster job")
    return parts


def texts(records: pl.DataFrame) -> list[str]:
    return records["messages"].list.first().struct.field("content").to_list()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_written_by_pyarrow_reads_as_one_dataset_in_order(tmp_path, rows):
    folder = tmp_path / "export"
    parts = pyarrow_folder(folder, rows)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curate("ingest", folder, "-o", tmp_path / "from_folder.parquet")
    curate("ingest", one, "-o", tmp_path / "from_file.parquet")

    got = pl.read_parquet(tmp_path / "from_folder.parquet")
    assert texts(got) == [r["text"] for part in parts for r in part]  # shards in path order, rows in file order
    assert got["id"].to_list() == pl.read_parquet(tmp_path / "from_file.parquet")["id"].to_list()
    assert set(got["source"]) == {"export"}
    entry = read_manifest(tmp_path / "from_folder.parquet")["inputs"][0]
    assert (entry["rows"], entry["shards"]) == (len(rows), 3)
    assert entry["hash"] == content_hash(folder)

    # A folder of nothing but shards and bookkeeping is hashed by its shards: `_SUCCESS` and checksums
    # come and go, a changed shard shows. (A folder with other files, the README here, is hashed whole.)
    (folder / "README.txt").unlink()
    shards_only = content_hash(folder)
    assert shards_only != entry["hash"]
    (folder / "_SUCCESS").unlink()
    (folder / ".a.parquet.crc").unlink()
    assert content_hash(folder) == shards_only == digest(folder)
    pq.write_table(pa.Table.from_pylist(parts[2][:-1]), folder / "d.parquet")
    assert content_hash(folder) != shards_only and digest(folder) == content_hash(folder)


def test_dedup_folder_to_folder_matches_the_same_input_as_one_file(tmp_path, rows):
    folder = tmp_path / "export"
    pyarrow_folder(folder, rows)
    single = tmp_path / "single.parquet"
    curate("ingest", folder, "-o", single)
    out = tmp_path / "deduped"
    curate("dedup", folder, "-o", out, rows_per_shard=20)
    curate("dedup", single, "-o", tmp_path / "file.parquet")

    kept = len(rows) - 3
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(-(-kept // 20))]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deduped", "deduped.drops.parquet", "deduped.manifest.json", "export", "file.parquet",
        "file.parquet.drops.parquet", "file.parquet.manifest.json", "single.parquet", "single.parquet.manifest.json"]
    as_folder, as_file = read_records(out).records, pl.read_parquet(tmp_path / "file.parquet")
    assert as_folder["id"].to_list() == as_file["id"].to_list() and as_folder.height == kept
    assert pl.scan_parquet(out).collect()["id"].to_list() == as_file["id"].to_list()  # other readers take it as is
    drops, file_drops = pl.read_parquet(tmp_path / "deduped.drops.parquet"), pl.read_parquet(tmp_path / "file.parquet.drops.parquet")
    assert drops.select("id", "reason", "duplicate_of").equals(file_drops.select("id", "reason", "duplicate_of"))
    assert drops.height == 3 and set(drops["reason"]) == {"exact_duplicate"}

    manifest = read_manifest(out)
    output = manifest["outputs"][0]
    assert Path(output["path"]).name == "deduped" and output["hash"] == content_hash(out)
    assert (output["rows"], output["shards"]) == (kept, -(-kept // 20))
    assert manifest["counts"]["in"] == len(rows) and manifest["counts"]["out"] == kept
    assert manifest["inputs"][0]["hash"] == content_hash(folder)

    # Lineage follows the folder: report and explain read it; a shard replaced by hand is refused.
    curate("report", out, "-o", tmp_path / "report.html")
    story = curate("explain", drops["id"][0], out)
    assert "exact_du" in story.stderr and "final: kept" in story.stderr  # a copy's id is its original's
    shard = out / "part-00001.parquet"
    saved = shard.read_bytes()
    pl.read_parquet(shard).head(3).write_parquet(shard)
    proc = curate("report", out, "-o", tmp_path / "report2.html", ok=False)
    assert "deduped" in proc.stderr and "does not match its manifest" in proc.stderr
    shard.write_bytes(saved)

    # A rerun replaces the earlier output whole: other shard sizes, no old shard, no temporary left.
    curate("dedup", folder, "-o", out, rows_per_shard=50)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_records(out).records["id"].to_list() == as_file["id"].to_list()
    assert read_manifest(out)["outputs"][0]["hash"] == content_hash(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_shards_that_disagree_are_refused_naming_the_shard_and_the_column(tmp_path, rows):
    folder = tmp_path / "export"
    parts = pyarrow_folder(folder, rows)
    out = tmp_path / "out"
    # A shard with another column name, then one with another type, then one bad row.
    pq.write_table(pa.Table.from_pylist([{"text": r["text"], "category": r["label"]} for r in rows[:4]]),
                   folder / "d.parquet")
    proc = curate("filter", folder, "-o", out, ok=False)
    assert f"{folder / 'd.parquet'}, field 'label': has no column 'label'" in proc.stderr
    pq.write_table(pa.Table.from_pylist([{"text": r["text"], "label": i} for i, r in enumerate(rows[:4])]),
                   folder / "d.parquet")
    proc = curate("filter", folder, "-o", out, ok=False)
    assert f"{folder / 'd.parquet'}, field 'label': column 'label' is Int64" in proc.stderr
    pq.write_table(pa.Table.from_pylist(parts[2]), folder / "d.parquet")
    bad = [dict(r) for r in rows[:5]]
    bad[3]["text"] = None
    pq.write_table(pa.Table.from_pylist(bad), folder / "b" / "c.parquet")
    proc = curate("filter", folder, "-o", out, ok=False)
    assert f"{folder / 'b' / 'c.parquet'}, row 4, field 'text'" in proc.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # A folder with nothing to read says so.
    (tmp_path / "empty").mkdir()
    proc = curate("filter", tmp_path / "empty", "-o", out, ok=False)
    assert f"{tmp_path / 'empty'}: an empty folder" in proc.stderr
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    proc = curate("filter", tmp_path / "empty", "-o", out, ok=False)
    assert "a folder with no Parquet shards" in proc.stderr


def test_a_folder_with_a_users_files_is_refused_as_output_and_left_untouched(tmp_path, rows):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("my notes")
    spark = tmp_path / "spark"
    spark.mkdir()  # named as smallset names its shards, but written by someone else
    pq.write_table(pa.Table.from_pylist(rows[:3]), spark / "part-00000.parquet")
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    before = {p: tree(p) for p in (theirs, spark)}
    for output, named in ((theirs, "notes.txt"), (spark, "part-00000.parquet")):
        proc = curate("ingest", data, "-o", output, ok=False)
        assert f"holds files smallset did not write ({named})" in proc.stderr
        assert tree(output) == before[output]
    proc = curate("ingest", data, "-o", afile, ok=False)
    assert "is a file, not a folder of shards" in proc.stderr and afile.read_text() == "not a folder"
    proc = curate("ingest", data, "-o", tmp_path / "new", ok=False, rows_per_shard="many")
    assert "SMALLSET_ROWS_PER_SHARD: must be a whole number of rows, not 'many'" in proc.stderr
    assert not (tmp_path / "new").exists()

    # Folders and inputs: an output inside an input folder, or a folder that holds an input, is refused.
    curate("ingest", data, "-o", tmp_path / "records")
    proc = curate("dedup", tmp_path / "records", "-o", tmp_path / "records" / "x.parquet", ok=False)
    assert "lies inside the input folder" in proc.stderr
    proc = curate("dedup", tmp_path / "records" / "part-00000.parquet", "-o", tmp_path / "records", ok=False)
    assert "holds the input" in proc.stderr
    proc = curate("dedup", tmp_path / "records", "-o", tmp_path / "records", ok=False)
    assert "is also an input" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("records")) == [
        "records", "records.manifest.json"]
    assert read_manifest(tmp_path / "records")["outputs"][0]["hash"] == content_hash(tmp_path / "records")


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import polars as pl
    from curate.readers import read_records
    from curate.writers import write_shards

    records = read_records(sys.argv[1]).records

    def batches():
        for i, batch in enumerate(records.iter_slices(10)):
            yield batch
            if i == 2:  # three shards written: say so, and wait for the kill
                open(sys.argv[3], "w").close()
                time.sleep(120)

    write_shards(batches(), sys.argv[2])
""")


def _kill_mid_write(tmp_path: Path, source: Path, output: Path) -> None:
    flag = tmp_path / "flag"
    flag.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(source), str(output), str(flag)])
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer ended before its third shard"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_writer_leaves_no_half_output_and_the_next_run_cleans_up(tmp_path, rows):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    curate("dedup", data, "-o", out, rows_per_shard=25)
    before = tree(out)

    _kill_mid_write(tmp_path, data, fresh)
    _kill_mid_write(tmp_path, data, out)
    assert not fresh.exists()  # a new folder: nothing at all
    assert tree(out) == before  # an earlier output: the old one, whole, still matching its manifest
    curate("report", out, "-o", tmp_path / "report.html")
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert len(stale) == 2 and all(p.endswith(".tmp") for p in stale)
    assert all(len(list((tmp_path / p).rglob("part-*.parquet"))) == 3 for p in stale)  # the half outputs, hidden

    curate("dedup", data, "-o", fresh, rows_per_shard=25)
    curate("dedup", data, "-o", out, rows_per_shard=40)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for folder, size in ((fresh, 25), (out, 40)):
        assert len(list(folder.iterdir())) == -(-(len(rows) - 3) // size)
        assert read_records(folder).records.height == len(rows) - 3
        assert read_manifest(folder)["outputs"][0]["hash"] == content_hash(folder)


def test_write_shards_takes_polars_and_pyarrow_batches_and_refuses_a_mismatch_before_writing(tmp_path, rows):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_records(data).records.with_columns(score=pl.lit(None))  # all null: type Null
    batches = list(records.iter_slices(16))
    batches[1] = batches[1].with_columns(score=pl.lit(0.5))  # a batch where the column has values
    mixed = [b.to_arrow() if i % 2 else b for i, b in enumerate(batches)]
    folder = write_shards(iter(mixed), tmp_path / "shards")
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:05d}.parquet" for i in range(len(batches))]
    back = read_records(folder).records
    assert back["id"].to_list() == records["id"].to_list()
    assert back["score"].dtype == pl.Float64 and back["score"].drop_nulls().len() == batches[1].height

    wrong = [batches[0], batches[1], batches[2].rename({"label": "category"})]
    with pytest.raises(SchemaMismatch, match="shard 2: has no column 'label'"):
        write_shards(wrong, tmp_path / "other")
    with pytest.raises(ValueError, match="at least one table"):
        write_shards([], tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "shards"]

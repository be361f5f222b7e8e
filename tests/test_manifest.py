"""Manifests beside every output, and atomic writes that leave nothing half-done."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import run_curate_many, write_jsonl

from curate.atomic import atomic_path, write_text
from curate.errors import InputError
from curate.manifest import Manifest, content_hash, manifest_path, read_manifest
from curate.writers import write_records

ROWS = [{"prompt": "P1", "completion": "C1"}, {"prompt": "P2", "completion": "C2"}, {"prompt": "P3", "completion": None}]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[str, Path]:
    """Two ingests, side by side, of inputs that differ in one byte."""
    root = tmp_path_factory.mktemp("manifest")
    a = write_jsonl(root / "a.jsonl", ROWS)
    b = root / "b.jsonl"
    b.write_bytes(a.read_bytes().replace(b"P1", b"P9"))
    calls = [
        ["ingest", a, "-o", root / "out_a" / "clean.parquet", "--on-error", "skip", "--source", "crm", "--map", "prompt=prompt"],
        ["ingest", b, "-o", root / "out_b" / "clean.jsonl", "--on-error", "skip"],
    ]
    for proc in run_curate_many(calls):
        assert proc.returncode == 0, proc.stderr
    return {"a": a, "b": b, "out_a": root / "out_a" / "clean.parquet", "out_b": root / "out_b" / "clean.jsonl"}


def test_manifest_is_written_beside_the_output(ingested):
    out = ingested["out_a"]
    assert manifest_path(out) == out.parent / "clean.parquet.manifest.json"
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.parquet", "clean.parquet.manifest.json", "clean.parquet.rejects.jsonl"]
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest == read_manifest(out)
    assert manifest["command"] == "curate ingest"
    assert manifest["parameters"] == {"layout": None, "map": ["prompt=prompt"], "source": "crm", "split": None, "on_error": "skip",
                                      "delimiter": None, "encoding": None}
    assert manifest["counts"] == {"in": 3, "out": 2, "rejected": 1}
    assert isinstance(manifest["wall_time_s"], float) and 0 <= manifest["wall_time_s"] < 300
    assert "polars" in manifest["versions"] and "smallset" in manifest["versions"] and "python" in manifest["versions"]
    assert manifest["versions"]["polars"] == pl.__version__
    assert manifest["argv"][-1] == "prompt=prompt"


def test_manifest_hashes_inputs_and_outputs(ingested):
    a, b = read_manifest(ingested["out_a"]), read_manifest(ingested["out_b"])
    [input_a], [input_b] = a["inputs"], b["inputs"]
    assert input_a["path"] == str(ingested["a"]) and input_a["rows"] == 3 and input_a["rejected"] == 1
    assert input_a["hash"] == content_hash(ingested["a"]) and input_a["hash"].startswith("blake2b:")
    assert input_b["hash"] == content_hash(ingested["b"])
    assert input_a["hash"] != input_b["hash"]  # one byte differs
    outputs = {Path(o["path"]).name: o for o in a["outputs"]}
    assert outputs["clean.parquet"]["hash"] == content_hash(ingested["out_a"])
    assert outputs["clean.parquet"]["rows"] == 2 and outputs["clean.parquet.rejects.jsonl"]["rows"] == 1
    assert b["outputs"][0]["hash"] == content_hash(ingested["out_b"])


def test_content_hash_of_files_and_folders(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"hello")
    (tmp_path / "y.txt").write_bytes(b"hello")
    assert content_hash(tmp_path / "x.txt") == content_hash(tmp_path / "y.txt")  # bytes, not names
    (tmp_path / "y.txt").write_bytes(b"hellO")
    assert content_hash(tmp_path / "x.txt") != content_hash(tmp_path / "y.txt")

    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.arrow").write_bytes(b"rows")
    (folder / "state.json").write_bytes(b"{}")
    first = content_hash(folder)
    assert content_hash(folder) == first
    (folder / "state.json").write_bytes(b"{ }")
    changed = content_hash(folder)
    assert changed != first
    (folder / "state.json").rename(folder / "other.json")  # in a folder, names count too
    assert content_hash(folder) != changed


def test_manifest_write_in_process(tmp_path):
    (tmp_path / "in.csv").write_text("text,label\na,b\n")
    manifest = Manifest("curate test", parameters={"k": 1})
    manifest.add_input(tmp_path / "in.csv", rows=1)
    time.sleep(0.01)
    out = tmp_path / "result.parquet"
    written = manifest.write(out)
    assert written == tmp_path / "result.parquet.manifest.json"
    data = read_manifest(out)
    assert "_t0" not in data
    assert data["parameters"] == {"k": 1}
    assert data["inputs"] == [{"path": str(tmp_path / "in.csv"), "hash": content_hash(tmp_path / "in.csv"), "rows": 1}]
    assert data["wall_time_s"] >= 0.01
    assert {"polars", "smallset", "pyarrow"} <= set(data["versions"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "result.parquet.manifest.json"]


# -- atomic writes -------------------------------------------------------------------


def test_atomic_file_untouched_when_the_body_raises(tmp_path):
    dest = tmp_path / "out.parquet"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            assert tmp.parent.parent == tmp_path and tmp != dest
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]


def test_atomic_new_file_not_created_when_the_body_raises(tmp_path):
    dest = tmp_path / "sub" / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_folder_untouched_when_the_body_raises(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text("new")
            (tmp / "weights.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("boom")
    assert [p.name for p in dest.iterdir()] == ["config.json"]
    assert (dest / "config.json").read_text() == "old"
    assert list(tmp_path.iterdir()) == [dest]


def test_atomic_success_replaces_file_and_folder_without_leftovers(tmp_path):
    write_text(tmp_path / "a.txt", "one")
    write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    dest = tmp_path / "folder"
    for version in ("v1", "v2"):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / f"{version}.txt").write_text(version)
    assert [p.name for p in dest.iterdir()] == ["v2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]


def test_write_records_failure_leaves_nothing(tmp_path):
    df = pl.DataFrame({"id": ["x"], "thing": pl.Series([object()], dtype=pl.Object)})
    with pytest.raises(Exception):
        write_records(df, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="cannot write '.csv'"):
        write_records(df, tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []

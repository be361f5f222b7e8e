"""Bad input: a precise message (file, line, field), a non-zero exit, and nothing written.

Through the real `curate ingest` console script, and through `read_records`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from conftest import chat, run_curate_many

from curate.errors import InputError
from curate.layouts import Mapping
from curate.manifest import read_manifest
from curate.readers import read_records

GOOD = {"prompt": "What is 2+2?", "completion": "4"}


def _lines(*rows: dict | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


@dataclass
class Case:
    file: str
    data: bytes
    expect: list[str]  # substrings of the message
    args: list[str] = field(default_factory=list)
    line: int | None = None
    field: str | None = None


CASES = {
    "malformed_jsonl_line": Case(
        "chats.jsonl", _lines(GOOD, GOOD, b'{"prompt": "unterminated', GOOD),
        ["chats.jsonl", "line 3", "invalid JSON"], line=3),
    "csv_missing_required_column": Case(
        "tickets.csv", b"text,category\nmy card broke,billing\n",
        ["tickets.csv", "field 'label'", "missing column 'label'"], ["--layout", "text_label"], field="label"),
    "csv_missing_value": Case(
        "tickets.csv", b"body,category\na,x\nb,y\nc,\n",
        ["tickets.csv, line 4, field 'label': no value in column 'category'"],
        ["--map", "text=body", "--map", "label=category"], line=4, field="label"),
    "empty_file": Case("empty.jsonl", b"", ["empty.jsonl", "the file is empty"]),
    "empty_csv": Case("empty.csv", b"", ["empty.csv", "the file is empty"]),
    "header_only_csv": Case("header.csv", b"text,label\n", ["header.csv", "no records"]),
    "invalid_utf8_jsonl": Case(
        "chats.jsonl", _lines(GOOD, GOOD, b'{"prompt": "caf\xe9", "completion": "x"}'),
        ["chats.jsonl", "line 3", "invalid UTF-8"], line=3),
    "invalid_utf8_csv": Case(
        "tickets.csv", b"text,label\nfine,a\ncaf\xe9,b\nfine too,c\n",
        ["tickets.csv", "line 3", "invalid UTF-8"], line=3),
    "no_assistant_turn": Case(
        "chats.jsonl", _lines({"messages": chat("hi", "hello")}, {"messages": [{"role": "user", "content": "hi"}]}),
        ["chats.jsonl, line 2, field 'messages': no assistant turn"], line=2, field="messages"),
    "unknown_role": Case(
        "chats.jsonl", _lines({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        ["chats.jsonl, line 1, field 'messages'", "unknown role"], line=1, field="messages"),
    "mapping_names_missing_column": Case(
        "tickets.csv", b"text,category\nhello,x\n",
        ["tickets.csv", "field 'label'", "'cat'", "not in the input"], ["--map", "label=cat", "--layout", "text_label"],
        field="label"),
    "mapping_unknown_field": Case(
        "tickets.csv", b"text,category\nhello,x\n", ["tickets.csv", "field 'colour'", "unknown mapping field"],
        ["--map", "colour=category"], field="colour"),
    "no_known_layout": Case(
        "odd.jsonl", _lines({"question": "q", "answer": "a"}), ["odd.jsonl", "no known layout", "--map FIELD=COLUMN"]),
    "json_array_non_object": Case(
        "data.json", json.dumps([GOOD, "just a string", GOOD]).encode(),
        ["data.json", "record 2", "expected a JSON object, found str"], line=2),
    "unknown_file_type": Case("data.txt", b"hello\n", ["data.txt", "unknown file type '.txt'"]),
}


def _make(root: Path, case: Case) -> tuple[Path, Path]:
    """Input in its own folder; an empty output folder that must stay empty."""
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    src = root / "in" / case.file
    src.write_bytes(case.data)
    return src, root / "out"


def _mapping(args: list[str]) -> Mapping:
    layout = args[args.index("--layout") + 1] if "--layout" in args else None
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--map"]
    return Mapping.parse(layout, pairs)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", CASES)
def test_read_records_names_file_line_and_field(tmp_path, name):
    case = CASES[name]
    src, _ = _make(tmp_path, case)
    with pytest.raises(InputError) as err:
        read_records(src, _mapping(case.args))
    message = str(err.value)
    for part in case.expect:
        assert part in message
    assert err.value.line == case.line
    assert err.value.field == case.field


# -- through the console script --------------------------------------------------------
# Each `curate` process takes seconds to start, so every scenario's command is prepared
# first and all of them run side by side, once per module.

# The cases the issue lists; the others are covered in-process above.
CLI_CASES = [n for n in CASES if n not in ("unknown_role", "empty_csv", "header_only_csv", "mapping_unknown_field",
                                           "no_known_layout", "unknown_file_type")]
EARLIER = {"clean.parquet": b"earlier output", "clean.manifest.json": b'{"earlier": true}'}


def _skip_jsonl(root: Path) -> list:
    src = root / "export.jsonl"
    src.write_bytes(_lines(
        {"prompt": "one", "completion": "1"},           # 1 good
        b'{"prompt": "two", ',                          # 2 malformed
        {"prompt": "three", "completion": "3"},         # 3 good
        b"",                                            # 4 blank: not a row
        {"prompt": "five", "completion": None},         # 5 no value
        b'{"prompt": "s\xefx", "completion": "6"}',     # 6 invalid UTF-8
        b"[7]",                                         # 7 not an object
        {"prompt": "eight", "completion": "8"},         # 8 good
    ))
    return ["ingest", src, "--on-error", "skip", "-o", root / "out" / "clean.parquet"]


def _skip_csv(root: Path) -> list:
    src = root / "tickets.csv"
    # line 3-4: one quoted cell over two lines, no label; 5: bad UTF-8; 7: no text
    src.write_bytes(b'text,label\nok one,a\n"two\nlines",\ncaf\xe9,b\nok four,c\n,d\n')
    return ["ingest", src, "--on-error", "skip", "-o", root / "clean.jsonl"]


def _skip_all_bad(root: Path) -> list:
    src, out = _make(root, Case("chats.jsonl", _lines(b"nope", b"{also nope"), []))
    return ["ingest", src, "--on-error", "skip", "-o", out / "clean.parquet"]


def _unknown_layout(root: Path) -> list:
    src, out = _make(root, Case("x.jsonl", _lines(GOOD), []))
    return ["ingest", src, "--layout", "chatml", "-o", out / "clean.parquet"]


def _earlier_output(root: Path) -> list:
    src, out = _make(root, Case("chats.jsonl", _lines(GOOD, b"not json"), []))
    for name, data in EARLIER.items():
        (out / name).write_bytes(data)
    return ["ingest", src, "-o", out / "clean.parquet"]


def _several_inputs(root: Path) -> list:
    (root / "out").mkdir(parents=True)
    (root / "good.jsonl").write_bytes(_lines(GOOD))
    (root / "bad.csv").write_bytes(b"text,label\nx,\n")
    return ["ingest", root / "good.jsonl", root / "bad.csv", "-o", root / "out" / "all.parquet"]


SCENARIOS = {
    "skip_jsonl": _skip_jsonl, "skip_csv": _skip_csv, "skip_all_bad": _skip_all_bad,
    "unknown_layout": _unknown_layout, "earlier_output": _earlier_output, "several_inputs": _several_inputs,
}


@dataclass
class Run:
    root: Path
    proc: subprocess.CompletedProcess

    @property
    def message(self) -> str:
        return _one_line(self.proc.stderr)


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, Run]:
    roots, calls = {}, []
    for name in CLI_CASES:
        root = roots[name] = tmp_path_factory.mktemp(name)
        case = CASES[name]
        src, out = _make(root, case)
        calls.append(["ingest", src, "-o", out / "clean.parquet", *case.args])
    for name, build in SCENARIOS.items():
        root = roots[name] = tmp_path_factory.mktemp(name)
        calls.append(build(root))
    procs = run_curate_many(calls)
    return {name: Run(root, proc) for (name, root), proc in zip(roots.items(), procs)}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_fails_cleanly_and_writes_nothing(cli, name):
    run = cli[name]
    assert run.proc.returncode != 0
    assert "Traceback" not in run.proc.stderr
    for part in CASES[name].expect:
        assert part in run.message, run.proc.stderr
    assert list((run.root / "out").iterdir()) == []  # no output, no manifest, no rejects, no temp file


def test_cli_unknown_layout(cli):
    run = cli["unknown_layout"]
    assert run.proc.returncode != 0
    assert "chatml" in run.message and "prompt_completion" in run.message  # says what is known
    assert list((run.root / "out").iterdir()) == []


def test_unknown_layout_in_a_mapping(tmp_path):
    src, _ = _make(tmp_path, Case("x.jsonl", _lines(GOOD), []))
    with pytest.raises(InputError, match="unknown layout 'chatml'") as err:
        read_records(src, Mapping(layout="chatml"))
    assert err.value.field == "layout"


def test_cli_failure_leaves_an_earlier_output_untouched(cli):
    run = cli["earlier_output"]
    assert run.proc.returncode != 0 and "line 2" in run.message
    assert {p.name: p.read_bytes() for p in (run.root / "out").iterdir()} == EARLIER


def test_cli_one_bad_input_among_several_writes_nothing(cli):
    run = cli["several_inputs"]
    assert run.proc.returncode != 0
    assert "bad.csv, line 2, field 'label'" in run.message
    assert list((run.root / "out").iterdir()) == []


# -- --on-error skip -----------------------------------------------------------------


def _rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_skip_writes_good_rows_rejects_and_counts(cli):
    run = cli["skip_jsonl"]
    src, out = run.root / "export.jsonl", run.root / "out" / "clean.parquet"
    assert run.proc.returncode == 0, run.proc.stderr
    assert "4 rejected" in run.message

    kept = pl.read_parquet(out)
    assert [m[0]["content"] for m in kept["messages"].to_list()] == ["one", "three", "eight"]

    rejects = _rejects(out.parent / "clean.rejects.jsonl")
    assert [(r["line"], r["field"]) for r in rejects] == [(2, None), (5, "completion"), (6, None), (7, None)]
    assert all(r["file"] == str(src) for r in rejects)
    reasons = [r["reason"] for r in rejects]
    assert "invalid JSON" in reasons[0]
    assert reasons[1] == "no value in column 'completion'"
    assert "invalid UTF-8" in reasons[2]
    assert reasons[3] == "expected a JSON object, found list"

    manifest = read_manifest(out)
    assert manifest["counts"] == {"in": 7, "out": 3, "rejected": 4}
    assert manifest["inputs"][0]["rows"] == 7 and manifest["inputs"][0]["rejected"] == 4
    assert manifest["parameters"]["on_error"] == "skip"
    assert {Path(o["path"]).name: o["rows"] for o in manifest["outputs"]} == {"clean.parquet": 3, "clean.rejects.jsonl": 4}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.manifest.json", "clean.parquet", "clean.rejects.jsonl"]


def test_skip_csv_rejects_carry_line_numbers(cli):
    run = cli["skip_csv"]
    out = run.root / "clean.jsonl"
    assert run.proc.returncode == 0, run.proc.stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["label"] for k in kept] == ["a", "c"]
    rejects = _rejects(run.root / "clean.rejects.jsonl")
    assert [(r["line"], r["field"]) for r in rejects] == [(3, "label"), (5, None), (7, "text")]
    assert read_manifest(out)["counts"] == {"in": 5, "out": 2, "rejected": 3}


def test_skip_with_every_row_bad_is_an_error_and_writes_nothing(cli):
    run = cli["skip_all_bad"]
    assert run.proc.returncode != 0
    assert "no valid records (2 rejected" in run.message
    assert list((run.root / "out").iterdir()) == []


def test_skip_read_records_returns_rejects(tmp_path):
    src = tmp_path / "chats.jsonl"
    src.write_bytes(_lines({"messages": chat("a", "b")}, {"messages": [{"role": "user", "content": "only"}]},
                           {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}))
    result = read_records(src, on_error="skip")
    assert result.records.height == 1 and result.rows_in == 3
    assert [(r.line, r.field, r.reason) for r in result.rejects] == [
        (2, "messages", "no assistant turn"), (3, "messages", "a message has no content")]


@pytest.mark.parametrize("file,data", [
    ("data.json", json.dumps([1, "two", None]).encode()),
    ("data.jsonl", b"nope\n[1]\n"),
    ("data.csv", b"text,label\n\xff,a\n"),
])
def test_skip_with_nothing_readable_names_the_rejects(tmp_path, file, data):
    (tmp_path / file).write_bytes(data)
    with pytest.raises(InputError, match=r"no valid records \(\d rejected; first: "):
        read_records(tmp_path / file, on_error="skip")

"""Bad input: a precise message (file, line, field), a non-zero exit, and nothing written.

Through the real `curate ingest` console script, through `read_records`, and (the
catalogue at the end, over 200 bad inputs) through the `ingest` command in this process.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import click
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import chat, run_curate_many

from curate.cli import main
from curate.errors import InputError
from curate.layouts import Mapping
from curate.manifest import read_manifest
from curate.readers import read_records

GOOD = {"prompt": "What is 2+2?", "completion": "4"}
INPUT_ERROR_EXIT = click.ClickException.exit_code  # what `SmallsetGroup` turns an InputError into


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
    # What issue 17 found: tracebacks, and errors without (or with the wrong) place.
    "messages_string": Case(
        "chats.jsonl", _lines(*[{"messages": chat("hi", "hello")}] * 7, {"messages": "hello"}),
        ["chats.jsonl, line 8, field 'messages': expected a list of turns, found the text 'hello'"], line=8, field="messages"),
    "deep_nesting": Case("deep.jsonl", _lines(GOOD, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                         ["deep.jsonl, line 2", "nested too deeply"], line=2),
    "ragged_csv": Case("tickets.csv", b"text,label\na,b\nc,d,e\nf,g\n",
                       ["tickets.csv, line 3: 3 fields where the header has 2 (delimiter ',')", "--delimiter"], line=3),
    "semicolon_csv": Case("tickets.csv", b"text;label\nmy card;billing\n",
                          ["tickets.csv, line 1", "';'-delimited: pass --delimiter ';'"], line=1),
    "unclosed_quote": Case("tickets.csv", b'text,label\na,b\n"c,d\ne,f\n',
                           ["tickets.csv, line 3", "a quoted cell opens here and never closes"], line=3),
    "nan": Case("chats.jsonl", _lines(GOOD, b'{"prompt": NaN, "completion": "4"}'),
                ["chats.jsonl, line 2, field 'prompt': NaN is not JSON"], line=2, field="prompt"),
    "mixed_layouts": Case("chats.jsonl", _lines(GOOD, GOOD, GOOD, GOOD, {"messages": chat("hi", "hello")}),
                          ["chats.jsonl, line 5", "'messages' layout"], line=5),
    "list_content": Case(
        "chats.jsonl", _lines({"messages": chat("a", "b")},
                              {"messages": [{"role": "user", "content": ["list", "content"]}, {"role": "assistant", "content": "x"}]}),
        ["chats.jsonl, line 2, field 'messages': messages[0] (user): content is a list, expected text"], line=2,
        field="messages"),
    "list_label": Case("tickets.jsonl", _lines({"text": "a", "label": "x"}, {"text": "b", "label": ["x", "y"]}),
                       ["tickets.jsonl, line 2, field 'label'", "a list, expected text"], line=2, field="label"),
    "duplicate_key": Case("chats.jsonl", _lines(GOOD, b'{"prompt": "a", "prompt": "b", "completion": "c"}'),
                          ["chats.jsonl, line 2, field 'prompt': the key 'prompt' appears twice"], line=2, field="prompt"),
    "empty_user_content": Case(
        "chats.jsonl", _lines({"messages": chat("a", "b")}, {"messages": chat("", "b")}),
        ["chats.jsonl, line 2, field 'messages': messages[0] (user) is empty"], line=2, field="messages"),
    "string_messages_parquet": Case(
        "data.parquet", b"", ["data.parquet, row 1, field 'messages': expected a list of turns"], line=1, field="messages"),
}


def _make(root: Path, case: Case) -> tuple[Path, Path]:
    """Input in its own folder; an empty output folder that must stay empty."""
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    src = root / "in" / case.file
    if src.suffix == ".parquet":  # string `messages`, int `label`: what the Parquet file held
        pl.DataFrame({"messages": ["hello", "there"], "label": [1, 2]}).write_parquet(src)
    else:
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
                                           "no_known_layout", "unknown_file_type", "deep_nesting", "list_label",
                                           "unclosed_quote", "empty_user_content", "semicolon_csv", "list_content",
                                           "duplicate_key", "string_messages_parquet")]
EARLIER = {"clean.parquet": b"earlier output", "clean.parquet.manifest.json": b'{"earlier": true}'}


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


def _skip_ragged_csv(root: Path) -> list:
    src = root / "tickets.csv"
    # 3: one field too many; 5: text after a closing quote; 7: a quote inside a cell; 8: a quote that never closes
    src.write_bytes(b'text,label\nok one,a\nx,y,z\nok two,b\na,"b"c\nok three,c\nq,b"d\n"open,e\nrest,f\n')
    return ["ingest", src, "--on-error", "skip", "-o", root / "out" / "clean.parquet"]


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
    "skip_jsonl": _skip_jsonl, "skip_csv": _skip_csv, "skip_ragged_csv": _skip_ragged_csv, "skip_all_bad": _skip_all_bad,
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
    assert run.proc.returncode == INPUT_ERROR_EXIT, run.proc.stderr
    assert "Traceback" not in run.proc.stderr + run.proc.stdout
    src = run.root / "in" / CASES[name].file
    assert src.suffix == ".parquet" or src.read_bytes() == CASES[name].data  # the input as it was
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

    rejects = _rejects(out.parent / "clean.parquet.rejects.jsonl")
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
    assert {Path(o["path"]).name: o["rows"] for o in manifest["outputs"]} == {"clean.parquet": 3, "clean.parquet.rejects.jsonl": 4}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.parquet", "clean.parquet.manifest.json", "clean.parquet.rejects.jsonl"]


def test_skip_csv_rejects_carry_line_numbers(cli):
    run = cli["skip_csv"]
    out = run.root / "clean.jsonl"
    assert run.proc.returncode == 0, run.proc.stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["label"] for k in kept] == ["a", "c"]
    rejects = _rejects(run.root / "clean.jsonl.rejects.jsonl")
    assert [(r["line"], r["field"]) for r in rejects] == [(3, "label"), (5, None), (7, "text")]
    assert read_manifest(out)["counts"] == {"in": 5, "out": 2, "rejected": 3}


def test_skip_on_a_ragged_csv_rejects_the_bad_lines_only(cli):
    """Issue 17, 3: a ragged CSV with --on-error skip aborted the whole file."""
    run = cli["skip_ragged_csv"]
    out = run.root / "out" / "clean.parquet"
    assert run.proc.returncode == 0, run.proc.stderr
    assert "4 rejected" in run.message
    assert pl.read_parquet(out)["label"].to_list() == ["a", "b", "c"]
    rejects = _rejects(out.parent / "clean.parquet.rejects.jsonl")
    assert [r["line"] for r in rejects] == [3, 5, 7, 8]
    assert "3 fields where the header has 2" in rejects[0]["reason"] and "never closes" in rejects[3]["reason"]
    assert read_manifest(out)["counts"] == {"in": 7, "out": 3, "rejected": 4}


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


# -- the catalogue ---------------------------------------------------------------------
# Hundreds of bad inputs, each through the real `ingest` command (click's runner on
# `curate.cli.main`, in this process: a `curate` process per case would take minutes).
# Every one must: exit with the code of an input error, print no traceback, name the
# file and the line (or row, or record) and field where there is one, leave the input
# as it was, and leave the output folder empty. The cases issue 17 names go through the
# installed script as well (`CASES`, `test_cli_fails_cleanly_and_writes_nothing`).

@dataclass(frozen=True)
class Bad:
    file: str
    data: bytes
    where: tuple[str, ...]  # what locates it: "line 3", "field 'label'" (the file's name is always checked)
    says: tuple[str, ...] = ()  # words of the reason
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    names: str | None = None  # the path the message must name, when not the input's (an output)


def _json_array(*rows) -> bytes:
    return json.dumps(list(rows), indent=1).encode()


def _cell(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return '"' + text.replace('"', '""') + '"'


def _csv(rows: list[dict], sep: str = ",") -> bytes:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = [sep.join(columns)] + [sep.join(_cell(r.get(c)) for c in columns) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _parquet(rows: list[dict] | pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    (rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows)).write_parquet(buf)
    return buf.getvalue()


# How each format writes rows, and how it names the place of row i (0-based).
FORMATS = {
    "jsonl": (lambda rows: _lines(*rows), lambda i: f"line {i + 1}"),
    "json": (lambda rows: _json_array(*rows), lambda i: f"record {i + 1}"),
    "csv": (lambda rows: _csv(rows), lambda i: f"line {i + 2}"),
    "tsv": (lambda rows: _csv(rows, "\t"), lambda i: f"line {i + 2}"),
    "parquet": (_parquet, lambda i: f"row {i + 1}"),
}
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")
JSON_FORMATS = ("jsonl", "json", "parquet")  # where a value can be a list or an object


def _turns(*pairs, key=("role", "content")) -> list[dict]:
    return [{key[0]: r, key[1]: c} for r, c in pairs]


PC = {"prompt": "What is 2+2?", "completion": "4"}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}
TL = {"text": "my card was charged twice", "label": "billing"}
MSG = {"messages": _turns(("user", "hi"), ("assistant", "hello"))}
SG = {"conversations": _turns(("human", "hi"), ("gpt", "hello"), key=("from", "value"))}

# (name, good row, bad row, field, words of the reason, formats): rows 0 and 1 are good, row 2 is bad.
ROW_PROBLEMS = [
    ("prompt_null", PC, {"prompt": None, "completion": "4"}, "prompt", "no value in column 'prompt'", TEXT_FORMATS),
    ("completion_null", PC, {"prompt": "q", "completion": None}, "completion", "no value in column 'completion'", TEXT_FORMATS),
    ("instruction_null", ALPACA, {**ALPACA, "instruction": None}, "instruction", "no value in column 'instruction'", TEXT_FORMATS),
    ("output_null", ALPACA, {**ALPACA, "output": None}, "output", "no value in column 'output'", TEXT_FORMATS),
    ("text_null", TL, {"text": None, "label": "billing"}, "text", "no value in column 'text'", TEXT_FORMATS),
    ("label_null", TL, {"text": "hello", "label": None}, "label", "no value in column 'label'", TEXT_FORMATS),
    ("label_list", TL, {"text": "hello", "label": ["billing", "account"]}, "label", "a list, expected text", ("jsonl", "json")),
    ("label_object", TL, {"text": "hello", "label": {"name": "billing"}}, "label", "an object, expected text", ("jsonl", "json")),
    ("prompt_list", PC, {"prompt": ["What", "is"], "completion": "4"}, "prompt", "a list, expected text", ("jsonl", "json")),
    ("prompt_object", PC, {"prompt": {"q": 1}, "completion": "4"}, "prompt", "an object, expected text", ("jsonl", "json")),
    ("completion_list", PC, {"prompt": "q", "completion": ["4"]}, "completion", "a list, expected text", ("jsonl", "json")),
    ("output_object", ALPACA, {**ALPACA, "output": {"answer": 4}}, "output", "an object", ("jsonl", "json")),
    ("system_list", {**PC, "system": "Be brief."}, {**PC, "system": ["Be", "brief"]}, "system", "a list", ("jsonl", "json")),
    ("no_assistant", MSG, {"messages": _turns(("user", "hi"))}, "messages", "no assistant turn", JSON_FORMATS + ("csv",)),
    ("unknown_role", MSG, {"messages": _turns(("wizard", "hi"), ("assistant", "x"))}, "messages", "unknown role",
     JSON_FORMATS + ("csv",)),
    ("null_content", MSG, {"messages": _turns(("user", None), ("assistant", "x"))}, "messages", "no content",
     JSON_FORMATS + ("csv",)),
    ("empty_user", MSG, {"messages": _turns(("user", ""), ("assistant", "x"))}, "messages", "messages[0] (user) is empty",
     JSON_FORMATS + ("csv", "tsv")),
    ("blank_user_after_system", MSG, {"messages": _turns(("system", "s"), ("user", " \n"), ("assistant", "x"))},
     "messages", "messages[1] (user) is empty", JSON_FORMATS + ("csv",)),
    ("empty_messages", MSG, {"messages": []}, "messages", "no messages", ("jsonl", "json", "csv")),
    ("content_list", MSG, {"messages": _turns(("user", ["list", "content"]), ("assistant", "x"))}, "messages",
     "messages[0]", ("jsonl", "json", "csv")),
    ("content_parts", MSG, {"messages": _turns(("user", [{"type": "text", "text": "hi"}]), ("assistant", "x"))},
     "messages", "join the parts' text", ("jsonl", "json", "csv")),
    ("content_object", MSG, {"messages": _turns(("user", "hi"), ("assistant", {"text": "x"}))}, "messages",
     "messages[1]", ("jsonl", "json", "csv")),
    ("messages_string", MSG, {"messages": "hello"}, "messages", "expected a list of turns", ("jsonl", "json", "csv")),
    ("messages_of_strings", MSG, {"messages": ["hi", "hello"]}, "messages", "messages[0] is text", ("csv",)),
    ("sharegpt_unknown_from", SG, {"conversations": _turns(("alien", "hi"), ("gpt", "x"), key=("from", "value"))},
     "messages", "unknown role", ("jsonl", "json", "parquet")),
    ("sharegpt_empty_human", SG, {"conversations": _turns(("human", ""), ("gpt", "x"), key=("from", "value"))},
     "messages", "(user) is empty", ("jsonl", "json", "parquet")),
    ("sharegpt_no_gpt", SG, {"conversations": _turns(("human", "hi"), key=("from", "value"))}, "messages",
     "no assistant turn", ("jsonl", "json", "parquet")),
    ("sharegpt_value_list", SG, {"conversations": _turns(("human", ["a"]), ("gpt", "x"), key=("from", "value"))},
     "conversations", "value is a list", ("jsonl", "json")),
]


def _row_cases() -> dict[str, Bad]:
    cases = {}
    for name, good, bad, fld, says, formats in ROW_PROBLEMS:
        for fmt in formats:
            write, where = FORMATS[fmt]
            cases[f"{name}.{fmt}"] = Bad(f"data.{fmt}", write([good, good, bad]), (where(2), f"field '{fld}'"), (says,))
    return cases


def _alone_cases() -> dict[str, Bad]:
    """A value of the wrong kind in every row: a column of lists where text belongs (no row mixes them)."""
    rows = {
        "label_list": [{"text": "hi", "label": ["a", "b"]}] * 2,
        "prompt_list": [{"prompt": ["a"], "completion": "b"}],
        "prompt_object": [{"prompt": {"k": "v"}, "completion": "b"}],
        "content_list": [{"messages": _turns(("user", ["a"]), ("assistant", ["b"]))}],
        "content_parts": [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                        {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}],
    }
    fields = {"label_list": "label", "prompt_list": "prompt", "prompt_object": "prompt"}
    cases = {}
    for name, rs in rows.items():
        for fmt in ("jsonl", "json", "parquet"):
            write, where = FORMATS[fmt]
            cases[f"alone_{name}.{fmt}"] = Bad(f"data.{fmt}", write(rs), (where(0), f"field '{fields.get(name, 'messages')}'"),
                                               ("expected text",))
    return cases


DEEP = b"[" * 100_000 + b"]" * 100_000


def _json_level_cases() -> dict[str, Bad]:
    """What is wrong with the JSON itself, in a JSON Lines file and in a JSON array."""
    g = json.dumps(PC).encode()
    lines = {  # (the bad line, the field it names or None, words)
        "nan": (b'{"prompt": "q", "completion": "4", "score": NaN}', "score", "NaN is not JSON"),
        "infinity": (b'{"prompt": "q", "completion": "4", "score": Infinity}', "score", "Infinity is not JSON"),
        "minus_infinity": (b'{"prompt": "q", "completion": "4", "score": -Infinity}', "score", "-Infinity is not JSON"),
        "nan_in_text_field": (b'{"prompt": NaN, "completion": "4"}', "prompt", "NaN is not JSON"),
        "duplicate_key": (b'{"prompt": "a", "prompt": "b", "completion": "4"}', "prompt", "appears twice"),
        "duplicate_nested_key": (b'{"messages": [{"role": "user", "content": "a", "content": "b"}, '
                                 b'{"role": "assistant", "content": "x"}]}', "content", "appears twice"),
        "deep_nesting": (b'{"prompt": ' + DEEP + b', "completion": "x"}', None, "nested too deeply"),
        "truncated": (b'{"prompt": "q", "compl', None, "invalid JSON"),
        "trailing_comma": (b'{"prompt": "q", "completion": "4",}', None, "invalid JSON"),
        "single_quotes": (b"{'prompt': 'q', 'completion': '4'}", None, "invalid JSON"),
        "bare_word": (b"hello", None, "invalid JSON"),
        "number": (b"42", None, "expected a JSON object, found int"),
        "string": (b'"a string"', None, "expected a JSON object, found str"),
        "list": (b"[1, 2]", None, "expected a JSON object, found list"),
        "null": (b"null", None, "expected a JSON object, found NoneType"),
        "true": (b"true", None, "expected a JSON object, found bool"),
        "invalid_utf8": (b'{"prompt": "caf\xe9", "completion": "4"}', None, "invalid UTF-8"),
        "overlong_utf8": (b'{"prompt": "\xc0\xaf", "completion": "4"}', None, "invalid UTF-8"),
        "nul_byte": (b'{"prompt": "a\x00b", "completion": "4"}', None, "NUL byte"),
        "control_character": (b'{"prompt": "a\x01b", "completion": "4"}', None, "invalid JSON"),
        "two_objects": (g + b" " + g, None, "invalid JSON"),
        "lone_cr": (g + b"\r" + g, None, "carriage return"),
    }
    cases = {}
    for name, (line, fld, says) in lines.items():
        where = ("line 3",) + ((f"field '{fld}'",) if fld else ())
        cases[f"{name}.jsonl"] = Bad("data.jsonl", g + b"\n" + g + b"\n" + line + b"\n" + g + b"\n", where, (says,))
    arrays = {  # the same troubles inside a JSON array: (the bad record, where, words)
        "nan": (b'{"prompt": "q", "completion": "4", "score": NaN}', ("record 3", "field 'score'"), "NaN is not JSON"),
        "infinity": (b'{"prompt": Infinity, "completion": "4"}', ("record 3", "field 'prompt'"), "Infinity"),
        "duplicate_key": (b'{"prompt": "a", "completion": "4", "completion": "5"}', ("record 3", "field 'completion'"),
                          "appears twice"),
        "duplicate_nested_key": (b'{"messages": [{"role": "user", "role": "assistant", "content": "a"}]}',
                                 ("record 3", "field 'role'"), "appears twice"),
        "deep_nesting": (b'{"prompt": ' + DEEP + b"}", ("line 4",), "nested too deeply"),
        "number": (b"7", ("record 3",), "expected a JSON object, found int"),
        "null": (b"null", ("record 3",), "found NoneType"),
        "truncated": (b'{"prompt": "q"', ("line 5",), "invalid JSON"),  # where the parser finds it out
    }
    for name, (record, where, says) in arrays.items():
        cases[f"{name}.json"] = Bad("data.json", b"[\n" + g + b",\n" + g + b",\n" + record + b"\n]\n", where, (says,))
    return cases


def _csv_cases() -> dict[str, Bad]:
    body = b"text,label\nmy card broke,billing\n"
    return {
        "ragged_more_fields": Bad("data.csv", body + b"a,b,c\nfine,x\n", ("line 3",), ("3 fields where the header has 2",
                                                                                          "delimiter ','", "--delimiter")),
        "ragged_late": Bad("data.csv", body * 1 + b"ok,a\n" * 40 + b"x,y,z,w\n", ("line 43",), ("4 fields",)),
        "semicolons": Bad("data.csv", b"text;label\nmy card;billing\nbroken screen;technical\n", ("line 1",),
                          ("';'-delimited", "--delimiter ';'")),
        "semicolons_with_commas_inside": Bad("data.csv", b"text;label\nhello, there;billing\nbye;x\n", ("line 2",),
                                             ("';'", "--delimiter ';'")),
        "tabs_in_a_csv": Bad("data.csv", b"text\tlabel\nhello\tbilling\n", ("line 1",), ("tab-delimited", "--delimiter tab")),
        "pipes": Bad("data.csv", b"text|label\nhello|billing\n", ("line 1",), ("'|'-delimited",)),
        "commas_in_a_tsv": Bad("data.tsv", b"text,label\nhello,billing\n", ("line 1",), ("','-delimited", "--delimiter ','")),
        "unclosed_quote": Bad("data.csv", body + b'"my card,billing\nnext,x\nlast,y\n', ("line 3",),
                              ("quoted cell opens here and never closes",)),
        "unclosed_quote_after_multiline_cell": Bad(
            "data.csv", body + b'"two\nlines",a\nok,b\nfine,"never closed\nmore,x\n', ("line 6",), ("never closes",)),
        "text_after_closing_quote": Bad("data.csv", body + b'a,"b"c\nok,d\n', ("line 3",), ("closing quote",)),
        "quote_inside_a_cell": Bad("data.csv", body + b'ok,d\na,b"c\nok,e\n', ("line 4",), ("quote the whole cell",)),
        "lone_cr_line_ends": Bad("data.csv", b"text,label\rmy card,billing\rnext,x\r", ("line 1",), ("carriage return",)),
        "lone_cr_mid_file": Bad("data.csv", body + b"a,b\rc,d\n", ("line 3",), ("carriage return",)),
        "duplicate_header": Bad("data.csv", b"text,label,text\na,b,c\n", ("line 1",), ("'text' twice",)),
        "header_unclosed_quote": Bad("data.csv", b'"text,label\na,b\n', ("line 1",), ("never closes",)),
        "invalid_utf8_header": Bad("data.csv", b"t\xe9xt,label\na,b\n", ("line 1",), ("invalid UTF-8", "--encoding")),
        "latin1_text": Bad("data.csv", body + "café,billing\n".encode("latin-1"), ("line 3",), ("invalid UTF-8", "--encoding")),
        "cp1252_quotes": Bad("data.csv", body + "\u201csmart\u201d,billing\n".encode("cp1252"), ("line 3",), ("invalid UTF-8",)),
        "nul_byte": Bad("data.csv", body + b"a\x00b,billing\n", ("line 3",), ("NUL byte",)),
        "utf16_with_bom": Bad("data.csv", "text,label\nhi,billing\n".encode("utf-16"), ("line 1",), ("UTF-16 byte-order mark",
                                                                                                       "--encoding utf-16")),
        "utf16_without_bom": Bad("data.csv", "text,label\nhi,billing\n".encode("utf-16-le"), ("line 1",), ("NUL byte",)),
        "empty_label_cell": Bad("data.csv", body + b"hello,\n", ("line 3", "field 'label'"), ("no value",)),
        "only_blank_lines": Bad("data.csv", b"text,label\n\n\n\n", (), ("no records",)),
        "ragged_and_bad_utf8": Bad("data.csv", body + b"caf\xe9,b\n", ("line 3",), ("invalid UTF-8",)),
        "messages_cell_not_json": Bad("data.csv", b'messages\n"[{""role"": ""user""}"\n', ("line 2", "field 'messages'"),
                                      ("expected a list of turns",)),
        "messages_cell_deep": Bad("data.csv", b"messages\n" + b"[" * 5000 + b"\n", ("line 2", "field 'messages'"),
                                  ("expected a list of turns",)),
    }


def _jsonl_file_cases() -> dict[str, Bad]:
    g = json.dumps(PC).encode() + b"\n"
    m = json.dumps(MSG).encode() + b"\n"
    return {
        "utf8_bom.jsonl": Bad("data.jsonl", codecs.BOM_UTF8 + g + g, ("line 1",), ("UTF-8 byte-order mark", "--encoding utf-8-sig")),
        "utf8_bom.json": Bad("data.json", codecs.BOM_UTF8 + b"[" + g + b"]", ("line 1",), ("--encoding utf-8-sig",)),
        "utf16.jsonl": Bad("data.jsonl", (g + g).decode().encode("utf-16"), ("line 1",), ("UTF-16", "--encoding utf-16")),
        "utf16.json": Bad("data.json", ("[" + g.decode() + "]").encode("utf-16"), ("line 1",), ("--encoding utf-16",)),
        "latin1.jsonl": Bad("data.jsonl", g + '{"prompt": "café", "completion": "x"}\n'.encode("latin-1"), ("line 2",),
                            ("invalid UTF-8", "--encoding")),
        "latin1.json": Bad("data.json", '[{"prompt": "café", "completion": "x"}]'.encode("latin-1"), ("line 1",),
                           ("invalid UTF-8",)),
        "mixed_layouts": Bad("data.jsonl", g * 4 + m + g, ("line 5",), ("'messages' layout", "'prompt_completion'")),
        "mixed_layouts_chat_first": Bad("data.jsonl", m * 3 + g, ("line 4",), ("'prompt_completion' layout",)),
        "mixed_layouts.json": Bad("data.json", _json_array(PC, PC, TL), ("record 3",), ("'text_label' layout",)),
        "messages_string_line_8": Bad("data.jsonl", m * 7 + b'{"messages": "hello"}\n', ("line 8", "field 'messages'"),
                                      ("expected a list of turns, found the text 'hello'",)),
        "messages_number": Bad("data.jsonl", b'{"messages": 5}\n', ("line 1", "field 'messages'"),
                               ("expected a list of turns, found a number",)),
        "messages_object": Bad("data.jsonl", b'{"messages": {"role": "user"}}\n', ("line 1", "field 'messages'"),
                               ("expected a list of turns, found an object",)),
        "messages_list_of_strings": Bad("data.jsonl", b'{"messages": ["hi", "there"]}\n', ("line 1", "field 'messages'"),
                                        ("messages[0] is text, expected an object",)),
        "messages_mixed_with_strings": Bad("data.jsonl", m + b'{"messages": ["hi", "there"]}\n',
                                           ("line 2", "field 'messages'"), ("messages[0] is text",)),
        "content_list_and_text_in_one_line": Bad(
            "data.jsonl", b'{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}\n',
            ("line 1", "field 'messages'"), ("messages[0].content is a list",)),
        "content_parts_and_text_in_one_line": Bad(
            "data.jsonl", m + b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}, '
                              b'{"role": "assistant", "content": "b"}]}\n',
            ("line 2", "field 'messages'"), ("content parts", "join the parts")),
        "whitespace_only": Bad("data.jsonl", b"   \n\n  \n", (), ("no records",)),
        "only_bad_lines_skipped": Bad("data.jsonl", b"nope\n[1]\n", (), ("no valid records",), ("--on-error", "skip")),
        "json_scalar": Bad("data.json", b"42", (), ("expected a JSON array of records, found int",)),
        "json_object_of_two_lists": Bad("data.json", b'{"a": [], "b": []}', (), ("exactly one list",)),
        "json_empty_array": Bad("data.json", b"[]", (), ("no records",)),
        "json_invalid": Bad("data.json", b'[{"prompt": "q",\n "completion": }]', ("line 2",), ("invalid JSON",)),
        "json_nul_byte": Bad("data.json", b'[{"prompt": "a\x00"}]', ("line 1",), ("NUL byte",)),
    }


def _parquet_cases() -> dict[str, Bad]:
    return {
        "messages_as_text": Bad("data.parquet", _parquet({"messages": ["hi", "there"], "label": [1, 2]}),
                                ("row 1", "field 'messages'"), ("expected a list of turns, found the text 'hi'",)),
        "messages_json_text_then_not": Bad(
            "data.parquet", _parquet({"messages": [json.dumps(MSG["messages"]), "oops"]}), ("row 2", "field 'messages'"),
            ("found the text 'oops'",)),
        "messages_as_int": Bad("data.parquet", _parquet({"messages": [1, 2]}), ("row 1", "field 'messages'"),
                               ("list of turns, found a number",)),
        "messages_of_strings": Bad("data.parquet", _parquet({"messages": [["hi"]]}), ("row 1", "field 'messages'"),
                                   ("messages[0] is text",)),
        "label_struct": Bad("data.parquet", _parquet({"text": ["a"], "label": [{"x": 1}]}), ("row 1", "field 'label'"),
                            ("an object, expected text",)),
        "prompt_binary": Bad("data.parquet", _parquet(pl.DataFrame({"prompt": [b"\x00\x01"], "completion": ["x"]})),
                             ("row 1", "field 'prompt'"), ("bytes, expected text",)),
        "content_int_list": Bad("data.parquet", _parquet({"messages": [[{"role": "user", "content": [1, 2]},
                                                                        {"role": "assistant", "content": [3]}]]}),
                                ("row 1", "field 'messages'"), ("messages[0] (user): content is a list",)),
        "no_rows": Bad("data.parquet", _parquet(pl.DataFrame(schema={"prompt": pl.String, "completion": pl.String})), (),
                       ("no records",)),
        "not_parquet": Bad("data.parquet", b"PAR1 this is not parquet", (), ("not a readable Parquet file",)),
        "truncated": Bad("data.parquet", _parquet([PC, PC])[:-20], (), ("not a readable Parquet file",)),
        "third_row_null_prompt": Bad("data.parquet", _parquet([PC, PC, {"prompt": None, "completion": "x"}]),
                                     ("row 3", "field 'prompt'"), ("no value",)),
    }


def _option_cases() -> dict[str, Bad]:
    csv_ok = b"text,label\nhello,billing\n"
    g = _lines(PC)
    return {
        "delimiter_two_chars": Bad("data.csv", csv_ok, ("field 'delimiter'",), ("one character",), ("--delimiter", ";;")),
        "delimiter_quote": Bad("data.csv", csv_ok, ("field 'delimiter'",), ("one character",), ("--delimiter", '"')),
        "wrong_delimiter_given": Bad("data.csv", csv_ok, ("line 1",), ("--delimiter ','",), ("--delimiter", ";")),
        "encoding_unknown": Bad("data.csv", csv_ok, ("field 'encoding'",), ("unknown encoding 'klingon'",),
                                ("--encoding", "klingon")),
        "encoding_does_not_fit": Bad("data.csv", b"text,label\nok,a\ncaf\xc3\xa9,b\n", ("line 3",), ("not valid ascii",),
                                     ("--encoding", "ascii")),
        "encoding_utf16_bad_row": Bad("data.jsonl", (g.decode() + '{"prompt": "q"}\n').encode("utf-16"),
                                      ("line 2", "field 'completion'"), ("no value",), ("--encoding", "utf-16")),
        "encoding_latin1_bad_row": Bad("data.csv", "text,label\ncafé,\n".encode("latin-1"), ("line 2", "field 'label'"),
                                       ("no value",), ("--encoding", "latin-1")),
        "encoding_sig_bad_json": Bad("data.jsonl", codecs.BOM_UTF8 + g + b"{oops\n", ("line 2",), ("invalid JSON",),
                                     ("--encoding", "utf-8-sig")),
        "bad_map_pair": Bad("data.csv", csv_ok, (), ("bad mapping 'textbody': expected FIELD=COLUMN",), ("--map", "textbody"),
                            names="--map"),
        "map_to_missing_column": Bad("data.csv", csv_ok, ("field 'text'",), ("'body'", "not in the input"),
                                     ("--map", "text=body", "--layout", "text_label")),
        "layout_missing_column": Bad("data.csv", csv_ok, ("field 'prompt'",), ("missing column 'prompt'",),
                                     ("--layout", "prompt_completion")),
        "unknown_suffix": Bad("data.xml", b"<a/>", (), ("unknown file type '.xml'",)),
        "no_suffix": Bad("data", b"{}", (), ("unknown file type ''",)),
        "empty_jsonl": Bad("data.jsonl", b"", (), ("the file is empty",)),
        "empty_tsv": Bad("data.tsv", b"", (), ("the file is empty",)),
        "empty_parquet": Bad("data.parquet", b"", (), ("the file is empty",)),
        "header_only_tsv": Bad("data.tsv", b"text\tlabel\n", (), ("no records",)),
        "no_known_layout_csv": Bad("data.csv", b"question,answer\nq,a\n", (), ("no known layout", "--map FIELD=COLUMN")),
    }


def _output_cases() -> dict[str, Bad]:
    g = _lines(PC)
    return {
        "output_parent_is_a_file": Bad("data.jsonl", g, (), ("is a file, not a folder",), ("-o", "{out}/afile/x.parquet"),
                                       names="afile"),
        "output_suffix_csv": Bad("data.jsonl", g, (), ("cannot write '.csv' files",), ("-o", "{out}/x.csv"), names="x.csv"),
        "output_is_the_input": Bad("data.jsonl", g, (), ("is also an input",), ("-o", "{in}"), names="data.jsonl"),
    }


def _block_cases() -> dict[str, Bad]:
    """Files larger than a block (set small here), bad in a late block: the block reader names the exact line."""
    env = (("SMALLSET_JSONL_BLOCK_BYTES", "400"),)
    rows = [json.dumps({"messages": _turns(("user", f"question {i}"), ("assistant", f"answer {i}"))}).encode()
            for i in range(60)]

    def late(bad: bytes) -> bytes:
        return b"\n".join(rows[:45] + [bad] + rows[45:]) + b"\n"

    return {
        f"late_{name}": Bad("data.jsonl", late(bad), ("line 46",) + ((f"field '{fld}'",) if fld else ()), (says,), env=env)
        for name, bad, fld, says in [
            ("duplicate_key", b'{"messages": [], "messages": []}', "messages", "appears twice"),
            ("nan", b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "x": NaN}',
             "x", "NaN"),
            ("content_list", b'{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}',
             "messages", "content is a list"),
            ("label_list", b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
                           b'"label": ["x"]}', "label", "a list"),
            ("messages_string", b'{"messages": "hello"}', "messages", "expected a list of turns"),
            ("empty_user", b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]}',
             "messages", "(user) is empty"),
            ("prompt_layout", json.dumps(PC).encode(), None, "'prompt_completion' layout"),
            ("malformed", b'{"messages": [', None, "invalid JSON"),
            ("deep", b'{"messages": ' + DEEP + b"}", None, "nested too deeply"),
        ]
    }


CATALOGUE: dict[str, Bad] = {
    **_row_cases(), **_alone_cases(), **_json_level_cases(), **{f"csv_{k}": v for k, v in _csv_cases().items()},
    **_jsonl_file_cases(), **{f"parquet_{k}": v for k, v in _parquet_cases().items()},
    **{f"option_{k}": v for k, v in _option_cases().items()}, **_output_cases(), **_block_cases(),
}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_the_catalogue_is_large():
    assert len(CATALOGUE) >= 150


def _ingest_args(case: Bad, src: Path, out: Path) -> list[str]:
    args = [a.replace("{out}", str(out)).replace("{in}", str(src)) for a in case.args]
    return ["ingest", str(src), *([] if "-o" in args else ["-o", str(out / "clean.parquet")]), *args]


@pytest.mark.parametrize("name", CATALOGUE)
def test_catalogue(tmp_path, name):
    case = CATALOGUE[name]
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "in" / case.file
    src.write_bytes(case.data)
    if case.names == "afile":
        (out / "afile").write_bytes(b"a file, not a folder")
    before = _digest(tmp_path)
    result = CliRunner().invoke(main, _ingest_args(case, src, out), env=dict(case.env))
    text = result.output  # stdout and stderr
    assert result.exit_code == INPUT_ERROR_EXIT, text
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    message = _one_line(text)
    assert (case.names or case.file) in message, message
    for part in case.where + case.says:
        assert part in message, message
    assert _digest(tmp_path) == before  # the input unchanged; no output, manifest, rejects or temp file

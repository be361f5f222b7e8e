"""Every reader and every layout, on real files: what comes out is the record model."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import chat, write_jsonl

from curate import records
from curate.errors import InputError
from curate.layouts import Mapping
from curate.readers import read_records
from curate.writers import write_records

# The same two examples in every format: the ids must not depend on the format.
ROWS = [
    {"prompt": "What is 2+2?", "completion": "4", "label": "math"},
    {"prompt": "Capital of France?", "completion": "Paris", "label": "geo"},
]
EXPECTED_MESSAGES = [chat("What is 2+2?", "4"), chat("Capital of France?", "Paris")]


def _read(path, mapping=None, **kw) -> pl.DataFrame:
    result = read_records(path, mapping, **kw)
    assert result.rejects == []
    return result.records


def _meta(df: pl.DataFrame) -> list[dict]:
    return [json.loads(m) for m in df["meta"]]


def _write_csv(path, header: list[str], rows: list[list[str]], sep: str = ",") -> None:
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


# -- formats -------------------------------------------------------------------------


def _jsonl(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", ROWS)


def _ndjson(tmp_path):
    return write_jsonl(tmp_path / "data.ndjson", ROWS)


def _json_array(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(ROWS, indent=2))
    return tmp_path / "data.json"


def _json_object(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps({"version": 3, "data": ROWS}))
    return tmp_path / "data.json"


def _jsonl_as_json(tmp_path):
    return write_jsonl(tmp_path / "data.json", ROWS)


def _csv(tmp_path):
    _write_csv(tmp_path / "data.csv", ["prompt", "completion", "label"], [list(r.values()) for r in ROWS])
    return tmp_path / "data.csv"


def _tsv(tmp_path):
    _write_csv(tmp_path / "data.tsv", ["prompt", "completion", "label"], [list(r.values()) for r in ROWS], sep="\t")
    return tmp_path / "data.tsv"


def _parquet(tmp_path):
    pl.DataFrame(ROWS).write_parquet(tmp_path / "data.parquet")
    return tmp_path / "data.parquet"


def _hf(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "data"))
    return tmp_path / "data"


FORMATS = {
    "jsonl": _jsonl, "ndjson": _ndjson, "json_array": _json_array, "json_object": _json_object,
    "jsonl_as_json": _jsonl_as_json, "csv": _csv, "tsv": _tsv, "parquet": _parquet, "hf_dataset": _hf,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_into_the_same_records(tmp_path, fmt):
    path = FORMATS[fmt](tmp_path)
    result = read_records(path)
    df = result.records
    assert df.columns == list(records.CORE_COLUMNS)
    assert records.is_record_set(df)
    assert result.rows_in == 2 and result.rejects == []
    assert df["messages"].to_list() == EXPECTED_MESSAGES
    assert df["label"].to_list() == ["math", "geo"]
    assert df["source"].to_list() == ["data", "data"]
    assert _meta(df) == [{}, {}]
    # ids are a function of content alone: the same in every format
    reference = read_records(write_jsonl(tmp_path / "reference.jsonl", ROWS)).records
    assert df["id"].to_list() == reference["id"].to_list()
    assert df["id"].n_unique() == 2 and all(len(i) == 32 for i in df["id"])


def test_dataset_dict_reads_train_by_default_and_a_named_split(tmp_path):
    import datasets

    folder = tmp_path / "splits"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS[:1]),
        "test": datasets.Dataset.from_list(ROWS[1:]),
    }).save_to_disk(str(folder))
    assert _read(folder)["messages"].to_list() == EXPECTED_MESSAGES[:1]
    assert _read(folder, split="test")["messages"].to_list() == EXPECTED_MESSAGES[1:]
    with pytest.raises(InputError) as err:
        read_records(folder, split="validation")
    assert err.value.field == "split" and "'train', 'test'" in str(err.value)


def test_dataset_dict_without_train_needs_a_split(tmp_path):
    import datasets

    folder = tmp_path / "splits"
    datasets.DatasetDict({"a": datasets.Dataset.from_list(ROWS[:1]), "b": datasets.Dataset.from_list(ROWS[1:])}).save_to_disk(str(folder))
    with pytest.raises(InputError, match="choose a split with --split") as err:
        read_records(folder)
    assert err.value.field == "split"
    assert _read(folder, split="b")["label"].to_list() == ["geo"]


def test_split_on_a_plain_dataset_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no splits") as err:
        read_records(_hf(tmp_path), split="train")
    assert err.value.field == "split"


def test_source_defaults_to_file_stem_and_can_be_set(tmp_path):
    path = write_jsonl(tmp_path / "my.export.jsonl", ROWS)
    assert _read(path)["source"].unique().to_list() == ["my.export"]
    assert _read(path, source="crm")["source"].unique().to_list() == ["crm"]


# -- layouts -------------------------------------------------------------------------


def test_messages_layout_with_system_turn_and_label(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": chat("hi", "hello", system="Be brief."), "label": "greeting"},
        {"messages": chat("q", "a") + [{"role": "user", "content": "more?"}, {"role": "assistant", "content": "no"}]},
    ])
    df = _read(path)
    assert df["messages"].to_list() == [
        chat("hi", "hello", system="Be brief."),
        chat("q", "a") + [{"role": "user", "content": "more?"}, {"role": "assistant", "content": "no"}],
    ]
    assert df["label"].to_list() == ["greeting", None]


def test_sharegpt_roles_are_mapped(tmp_path):
    path = write_jsonl(tmp_path / "sg.jsonl", [{"conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "Bye"},
    ]}])
    assert _read(path)["messages"].to_list() == [[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye"},
    ]]


def test_sharegpt_with_a_system_column(tmp_path):
    path = write_jsonl(tmp_path / "sg.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "system": "Sys"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "system": ""},
    ])
    assert _read(path)["messages"].to_list() == [chat("Hi", "Yo", system="Sys"), chat("Hi", "Yo")]


@pytest.mark.parametrize("answer_column", ["completion", "response"])
def test_prompt_completion_and_prompt_response(tmp_path, answer_column):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "P", answer_column: "C"}])
    df = _read(path)
    assert df["messages"].to_list() == [chat("P", "C")]
    assert _meta(df) == [{}]  # the answer column was used, not left over


def test_prompt_completion_with_optional_system_column(tmp_path):
    _write_csv(tmp_path / "pc.csv", ["system", "prompt", "completion"], [["Be kind.", "P1", "C1"], ["", "P2", "C2"]])
    assert _read(tmp_path / "pc.csv")["messages"].to_list() == [chat("P1", "C1", system="Be kind."), chat("P2", "C2")]


def test_alpaca_with_and_without_input(tmp_path):
    (tmp_path / "alpaca.json").write_text(json.dumps([
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Name a colour.", "input": "", "output": "blue"},
        {"instruction": "Name a fruit.", "output": "apple", "system": "Answer in one word."},
    ]))
    assert _read(tmp_path / "alpaca.json")["messages"].to_list() == [
        chat("Translate to French.\n\ncat", "chat"),
        chat("Name a colour.", "blue"),
        chat("Name a fruit.", "apple", system="Answer in one word."),
    ]


def test_text_label_keeps_labels_as_strings(tmp_path):
    _write_csv(tmp_path / "cls.csv", ["text", "label"], [["refund please", "01"], ["love it", "2"]])
    df = _read(tmp_path / "cls.csv")
    assert df.schema["label"] == pl.String
    assert df["label"].to_list() == ["01", "2"]  # not 1, not 2.0
    assert df["messages"].to_list() == [chat("refund please", "01"), chat("love it", "2")]


def test_text_label_integer_labels_in_json_become_strings(tmp_path):
    path = write_jsonl(tmp_path / "cls.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    assert _read(path)["label"].to_list() == ["1", "0"]


def test_text_label_with_system_column(tmp_path):
    _write_csv(tmp_path / "cls.csv", ["text", "label", "system"], [["t", "x", "Classify."]])
    assert _read(tmp_path / "cls.csv")["messages"].to_list() == [chat("t", "x", system="Classify.")]


# -- explicit mapping ----------------------------------------------------------------


def test_mapping_parse():
    m = Mapping.parse("text_label", ("text=body", " label = category "))
    assert m.layout == "text_label" and m.columns == {"text": "body", "label": "category"}
    for bad in ("body", "=body", "text="):
        with pytest.raises(InputError, match="expected FIELD=COLUMN"):
            Mapping.parse(None, [bad])


def test_mapping_without_layout_picks_the_layout_from_the_fields(tmp_path):
    _write_csv(tmp_path / "t.csv", ["body", "category", "agent"], [["my card broke", "billing", "ann"]])
    df = _read(tmp_path / "t.csv", Mapping.parse(None, ["text=body", "label=category"]))
    assert df["messages"].to_list() == [chat("my card broke", "billing")]
    assert df["label"].to_list() == ["billing"]
    assert _meta(df) == [{"agent": "ann"}]


def test_mapping_with_layout(tmp_path):
    _write_csv(tmp_path / "qa.csv", ["question", "answer", "topic"], [["Why?", "Because.", "misc"]])
    df = _read(tmp_path / "qa.csv", Mapping.parse("prompt_completion", ["prompt=question", "completion=answer", "label=topic"]))
    assert df["messages"].to_list() == [chat("Why?", "Because.")]
    assert df["label"].to_list() == ["misc"]
    assert _meta(df) == [{}]


def test_mapping_one_field_and_the_rest_by_name(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q", "completion": "A", "system": "S"}])
    df = _read(path, Mapping.parse(None, ["prompt=question"]))
    assert df["messages"].to_list() == [chat("Q", "A", system="S")]


def test_mapping_overrides_detection(tmp_path):
    # Detection would read prompt/completion; the mapping asks for text + label instead.
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "P", "completion": "C", "body": "B", "tag": "T"}])
    df = _read(path, Mapping.parse("text_label", ["text=body", "label=tag"]))
    assert df["messages"].to_list() == [chat("B", "T")]
    assert _meta(df) == [{"prompt": "P", "completion": "C"}]


# -- meta ----------------------------------------------------------------------------


def test_unmapped_columns_land_in_meta_with_their_types(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [
        {"prompt": "P", "completion": "C", "ticket": 17, "tags": ["a", "b"], "extra": {"k": True}},
        {"prompt": "P2", "completion": "C2", "ticket": 18, "tags": [], "extra": {"k": False}},
    ])
    assert _meta(_read(path)) == [
        {"ticket": 17, "tags": ["a", "b"], "extra": {"k": True}},
        {"ticket": 18, "tags": [], "extra": {"k": False}},
    ]


def test_a_meta_object_column_is_flattened_into_meta(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "P", "completion": "C", "meta": {"origin": "crm"}, "ticket": 3}])
    assert _meta(_read(path)) == [{"ticket": 3, "origin": "crm"}]


def test_a_plain_text_meta_column_stays_valid_json(tmp_path):
    """A `meta` column that holds text (not JSON objects) is kept under its name, not taken as JSON."""
    _write_csv(tmp_path / "x.csv", ["prompt", "completion", "meta"], [["P", "C", "from the 2023 export"], ["P2", "C2", ""]])
    df = _read(tmp_path / "x.csv")
    assert _meta(df) == [{"meta": "from the 2023 export"}, {"meta": None}]
    write_records(df, tmp_path / "out.jsonl")  # and it writes valid JSONL
    assert [json.loads(line)["meta"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == _meta(df)


def test_an_input_id_column_is_kept_in_meta(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"id": "ticket-9", "prompt": "P", "completion": "C"}])
    df = _read(path)
    assert df["id"][0] != "ticket-9"
    assert _meta(df) == [{"id": "ticket-9"}]


# -- ids -----------------------------------------------------------------------------


def _id(tmp_path, row, name="one.jsonl") -> str:
    return _read(write_jsonl(tmp_path / name, [row]))["id"][0]


def test_id_ignores_whitespace_and_unicode_compatibility_forms(tmp_path):
    plain = _id(tmp_path, {"prompt": "Hello world", "completion": "ok fine", "label": "x"}, "a.jsonl")
    messy = _id(tmp_path, {"prompt": "  Hello \t\n world\n", "completion": "ｏｋ\u00a0fine", "label": "x"}, "b.jsonl")
    assert plain == messy


def test_id_depends_on_content_label_and_roles(tmp_path):
    base = {"prompt": "Hello", "completion": "ok", "label": "x"}
    ids = {
        _id(tmp_path, base, "a.jsonl"),
        _id(tmp_path, {**base, "label": "y"}, "b.jsonl"),
        _id(tmp_path, {"prompt": "Hello", "completion": "ok"}, "c.jsonl"),  # no label
        _id(tmp_path, {**base, "completion": "OK"}, "d.jsonl"),  # case is content
        _id(tmp_path, {**base, "system": "S"}, "e.jsonl"),
    }
    assert len(ids) == 5
    # Turn boundaries count: "ab" + "c" is not "a" + "bc".
    assert _id(tmp_path, {"prompt": "ab", "completion": "c"}, "f.jsonl") != _id(tmp_path, {"prompt": "a", "completion": "bc"}, "g.jsonl")


def test_id_does_not_depend_on_source_or_meta(tmp_path):
    a = _id(tmp_path, {"prompt": "P", "completion": "C", "note": 1}, "a.jsonl")
    b = _id(tmp_path, {"prompt": "P", "completion": "C", "note": 2}, "b.jsonl")
    assert a == b


def test_ids_equal_across_layouts_for_the_same_conversation(tmp_path):
    pc = _id(tmp_path, {"prompt": "P", "completion": "C"}, "a.jsonl")
    msgs = _id(tmp_path, {"messages": chat("P", "C")}, "b.jsonl")
    sharegpt = _id(tmp_path, {"conversations": [{"from": "human", "value": "P"}, {"from": "gpt", "value": "C"}]}, "c.jsonl")
    alpaca = _id(tmp_path, {"instruction": "P", "input": "", "output": "C"}, "d.jsonl")
    assert pc == msgs == sharegpt == alpaca


# -- round trips ---------------------------------------------------------------------


def test_round_trip_jsonl_parquet_jsonl(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", [
        {"messages": chat('He said "hi",\nthen left — café ☕', "a\\b\ttab", system="S"), "label": "01",
         "ticket": 1, "tags": ["x"], "note": "comma, \"quote\""},
        {"messages": chat("q", "a"), "ticket": 2, "tags": [], "note": None},
    ])
    first = _read(raw)
    write_records(first, tmp_path / "mid.parquet")
    second = _read(tmp_path / "mid.parquet")
    write_records(second, tmp_path / "out.jsonl")
    third = _read(tmp_path / "out.jsonl")
    for df in (second, third):
        assert df.columns == first.columns
        for column in ("id", "messages", "label", "source"):
            assert df[column].to_list() == first[column].to_list(), column
        assert _meta(df) == _meta(first)
    assert first["source"].to_list() == ["raw", "raw"]
    assert first["label"].to_list() == ["01", None]
    assert _meta(first)[0] == {"ticket": 1, "tags": ["x"], "note": 'comma, "quote"'}
    # The JSONL is for people and other tools: meta is a nested object, not a JSON string.
    line = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert line["meta"] == {"ticket": 1, "tags": ["x"], "note": 'comma, "quote"'}
    assert line["id"] == first["id"][0]


def test_parquet_record_set_keeps_stage_columns(tmp_path):
    first = _read(write_jsonl(tmp_path / "raw.jsonl", ROWS))
    write_records(first.with_columns(pl.Series("judge_score", [0.5, 0.9])), tmp_path / "scored.parquet")
    again = _read(tmp_path / "scored.parquet")
    assert again.columns == [*records.CORE_COLUMNS, "judge_score"]
    assert again["judge_score"].to_list() == [0.5, 0.9]
    assert again["id"].to_list() == first["id"].to_list()


def test_csv_with_multiline_cells_and_blank_lines(tmp_path):
    (tmp_path / "ml.csv").write_text('text,label\n"line one\nline two",a\n\nplain,b\n\n', encoding="utf-8")
    result = read_records(tmp_path / "ml.csv")
    assert result.rows_in == 2
    assert result.records["messages"].to_list() == [chat("line one\nline two", "a"), chat("plain", "b")]

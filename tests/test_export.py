"""`curate export` into the layouts trainers read, and the portable adapter `train lora` saves.

The data is real: docstring paragraphs labelled by their module (tests/corpus.py) plus a few
multi-turn chats, through the installed `curate` script. Each export is loaded back with its
consumer's loader where it is installed (`datasets`' json loader and `load_from_disk`; smallset's
own reader for the layouts it reads), and checked against the documented layout otherwise (TRL
is not installed here: its conversational rule, a list of {role, content} dicts, is checked as
`trl.data_utils.is_conversational` states it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import run_curate, run_curate_many, write_jsonl
from corpus import docstring_corpus
from curate.models import DEFAULT_LLM_HUB_ID, ResolvedModel, resolve_llm
from curate.readers import read_records
from train.adapter_base import BASE_FILE, base_spec, record_base

SYSTEM = "Name the topic of this documentation paragraph."
CHATS = [
    [{"role": "system", "content": "You answer questions about Python's standard library."},
     {"role": "user", "content": "Which module joins paths?"}, {"role": "assistant", "content": "os.path, with os.path.join."},
     {"role": "user", "content": "And the object-oriented one?"}, {"role": "assistant", "content": "pathlib.Path."}],
    [{"role": "user", "content": "What does textwrap.dedent do?"},
     {"role": "assistant", "content": "It removes common leading whitespace from every line."},
     {"role": "user", "content": "Does it touch tabs?"}, {"role": "assistant", "content": "Tabs and spaces are not treated as equal."}],
    [{"role": "user", "content": "Give me a random float."}, {"role": "assistant", "content": "random.random() returns one in [0, 1)."},
     {"role": "user", "content": "Seeded?"}, {"role": "assistant", "content": "Call random.seed(42) first."}],
    [{"role": "user", "content": "I have a list of file names."}, {"role": "user", "content": "How do I match *.txt?"},
     {"role": "assistant", "content": "fnmatch.filter(names, '*.txt'), or glob.glob for the disk."}],  # not alternating
]


def _conversational(example: dict) -> bool:
    """TRL's rule (`is_conversational`): a known key whose value is a list of dicts with role and content."""
    keys = [k for k in ("prompt", "chosen", "rejected", "completion", "messages") if k in example]
    return bool(keys) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for k in keys for m in example[k])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """40 docstring rows (30 train, 10 test; half with a system prompt) and 4 multi-turn chats (train), ingested."""
    root = tmp_path_factory.mktemp("export")
    corpus = docstring_corpus()[::9][:40]
    assert len(corpus) == 40 and len({r["label"] for r in corpus}) >= 5
    rows = [{"text": r["text"], "label": r["label"], "split": "test" if k % 4 == 3 else "train",
             **({"system": SYSTEM} if k % 2 else {})} for k, r in enumerate(corpus)]
    chats = [{"messages": m, "split": "train"} for m in CHATS]
    write_jsonl(root / "docs.jsonl", rows)
    write_jsonl(root / "chats.jsonl", chats)
    data = root / "all.parquet"
    done = run_curate("ingest", root / "docs.jsonl", root / "chats.jsonl", "-o", data)
    assert done.returncode == 0, done.stderr
    records = read_records(data).records
    multi = [i for i, m in zip(records["id"], records["messages"]) if sum(t["role"] == "user" for t in m) > 1]
    assert len(multi) == 4 and records.height == 44
    return {"root": root, "data": data, "records": records, "multi": multi}


@pytest.fixture(scope="module")
def exports(dataset) -> dict:
    """Every format, side by side through the real script."""
    root, data = dataset["root"], dataset["data"]
    calls = {
        "messages": ["--format", "messages", "-o", root / "m.jsonl", "--keep-column", "id",
                     "--axolotl-config", root / "ax_m.yaml", "--llama-factory-config", root / "lf" / "dataset_info.json",
                     "--on-unfit", "skip"],
        "pc": ["--format", "prompt-completion", "-o", root / "pc.parquet", "--keep-column", "id", "--keep-column", "label"],
        "plain": ["--format", "prompt-completion", "--plain", "-o", root / "plain.jsonl", "--on-unfit", "skip", "--keep-column", "id"],
        "sharegpt": ["--format", "sharegpt", "-o", root / "lf" / "sg.json", "--keep-column", "id", "--on-unfit", "skip",
                     "--axolotl-config", root / "ax_sg.yml"],
        "alpaca": ["--format", "alpaca", "-o", root / "alpaca.jsonl", "--on-unfit", "skip", "--keep-column", "id",
                   "--axolotl-config", root / "ax_a.yaml"],
        "hf": ["--format", "hf", "-o", root / "hf", "--keep-column", "id", "--axolotl-config", root / "ax_hf.yaml"],
        "hf_sg": ["--format", "hf", "--layout", "sharegpt", "-o", root / "hf_sg", "--on-unfit", "skip"],
        "unfit": ["--format", "alpaca", "-o", root / "refused.jsonl"],
    }
    (root / "lf").mkdir()
    (root / "lf" / "dataset_info.json").write_text(json.dumps({"theirs": {"file_name": "theirs.json"}}))
    done = run_curate_many([["export", data, *args] for args in calls.values()])
    return dict(zip(calls, done))


def _contents(conversations) -> list[str]:
    return sorted(json.dumps(list(c), sort_keys=True) for c in conversations)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _by_id(dataset) -> dict:
    return dict(zip(dataset["records"]["id"].to_list(), dataset["records"]["messages"].to_list()))


def test_messages_load_with_datasets_and_match_the_records(dataset, exports):
    from datasets import load_dataset

    _ok(exports["messages"])
    rows = load_dataset("json", data_files=str(dataset["root"] / "m.jsonl"), split="train")
    assert rows.num_rows == 43  # the LLaMA-Factory entry holds it to ShareGPT's turn order: one chat does not alternate
    assert rows.column_names == ["messages", "id"] and all(_conversational(r) for r in rows)
    by_id = _by_id(dataset)
    for row in rows:
        assert row["messages"] == by_id[row["id"]]
    # smallset reads its own export back to the same conversations (the label is not part of the layout)
    back = read_records(dataset["root"] / "m.jsonl").records
    assert _contents(back["messages"]) == _contents(rows["messages"])
    manifest = json.loads((dataset["root"] / "m.jsonl.manifest.json").read_text())
    assert manifest["command"] == "curate export" and manifest["counts"] == {"in": 44, "out": 43, "unfit": 1}
    assert manifest["parameters"]["format"] == "messages" and manifest["parameters"]["keep"] == ["id"]


def test_prompt_completion_is_trl_conversational_and_plain_strings_refuse_multi_turn(dataset, exports):
    from datasets import load_dataset

    _ok(exports["pc"]), _ok(exports["plain"])
    pc = load_dataset("parquet", data_files=str(dataset["root"] / "pc.parquet"), split="train")
    assert pc.num_rows == 44 and all(_conversational(r) for r in pc)
    by_id = _by_id(dataset)
    for row in pc:
        assert row["prompt"] + row["completion"] == by_id[row["id"]] and row["completion"][0]["role"] == "assistant"
    labelled = [r for r in pc if r["label"] is not None]
    assert len(labelled) == 40 and all(r["completion"][0]["content"] == r["label"] for r in labelled)

    plain = load_dataset("json", data_files=str(dataset["root"] / "plain.jsonl"), split="train")
    assert plain.num_rows == 40 and not any(_conversational(r) for r in plain)
    for row in plain:
        turns = by_id[row["id"]]
        prompt = turns[-2]["content"] if turns[0]["role"] != "system" else f"{turns[0]['content']}\n\n{turns[1]['content']}"
        assert row["prompt"] == prompt and row["completion"] == turns[-1]["content"]
    drops = pl.read_parquet(dataset["root"] / "plain.jsonl.drops.parquet")
    assert sorted(drops["id"]) == sorted(dataset["multi"]) and set(drops["reason"]) == {"unfit_prompt_completion"}
    assert "4 unfit rows skipped" in exports["plain"].stderr.replace("\n", " ")


def test_sharegpt_roles_and_round_trip(dataset, exports):
    _ok(exports["sharegpt"])
    rows = json.loads((dataset["root"] / "lf" / "sg.json").read_text())  # one JSON array, as LLaMA-Factory's examples
    assert len(rows) == 43  # the chat with two user turns in a row is skipped
    for row in rows:
        roles = [t["from"] for t in row["conversations"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["human", "gpt"] * (len(body) // 2) and set(row["conversations"][0]) == {"from", "value"}
    # smallset's ShareGPT reader maps them back to the same conversations
    back = read_records(dataset["root"] / "lf" / "sg.json").records
    by_id = _by_id(dataset)
    assert _contents(back["messages"]) == _contents([by_id[r["id"]] for r in rows])


def test_alpaca_maps_system_and_user_and_refuses_multi_turn_by_id(dataset, exports):
    _ok(exports["alpaca"])
    rows = [json.loads(line) for line in (dataset["root"] / "alpaca.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(set(r) == {"instruction", "input", "output", "id"} for r in rows)
    by_id = _by_id(dataset)
    with_system = [r for r in rows if by_id[r["id"]][0]["role"] == "system"]
    assert len(with_system) == 20 and all(r["instruction"] == SYSTEM and r["input"] for r in with_system)
    assert all(r["input"] == "" for r in rows if r not in with_system)
    refused = exports["unfit"]
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"row {dataset['multi'][0]}" in refused.stderr and "multi-turn chat" in refused.stderr
    assert "3 more rows" in refused.stderr and not (dataset["root"] / "refused.jsonl").exists()


def test_hf_folders_are_dataset_dicts_by_split(dataset, exports):
    from datasets import load_from_disk

    _ok(exports["hf"]), _ok(exports["hf_sg"])
    saved = load_from_disk(str(dataset["root"] / "hf"))
    assert {k: v.num_rows for k, v in saved.items()} == {"train": 34, "test": 10}  # the split the input carried (in meta)
    assert saved["train"].column_names == ["messages", "id"] and all(_conversational(r) for r in saved["test"])
    sharegpt = load_from_disk(str(dataset["root"] / "hf_sg"))
    assert {k: v.num_rows for k, v in sharegpt.items()} == {"train": 33, "test": 10}
    assert sharegpt["train"].column_names == ["conversations"]
    assert {t["from"] for r in sharegpt["train"] for t in r["conversations"]} == {"system", "human", "gpt"}


def test_trainer_configs_parse_and_point_at_the_file(dataset, exports):
    root = dataset["root"]
    entry = yaml.safe_load((root / "ax_m.yaml").read_text())["datasets"][0]
    assert Path(entry["path"]) == (root / "m.jsonl").resolve() and Path(entry["path"]).is_file()
    assert entry["type"] == "chat_template" and entry["field_messages"] == "messages" and entry["ds_type"] == "json"
    sg = yaml.safe_load((root / "ax_sg.yml").read_text())["datasets"][0]
    assert sg["message_property_mappings"] == {"role": "from", "content": "value"} and sg["roles"]["assistant"] == ["gpt"]
    assert yaml.safe_load((root / "ax_a.yaml").read_text())["datasets"][0]["type"] == "alpaca"
    hf = yaml.safe_load((root / "ax_hf.yaml").read_text())["datasets"][0]
    assert Path(hf["path"]).is_dir() and hf["split"] == "train" and "ds_type" not in hf
    info = json.loads((root / "lf" / "dataset_info.json").read_text())
    assert info["theirs"] == {"file_name": "theirs.json"}  # the entries already there are kept
    m = info["m"]
    assert Path(m["file_name"]).is_absolute() and Path(m["file_name"]) == (root / "m.jsonl").resolve()
    assert m["formatting"] == "sharegpt" and m["columns"] == {"messages": "messages"} and m["tags"]["role_tag"] == "role"


def test_bad_requests_are_clear_errors(dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no stored token either
    curate = Path(sys.executable).parent / "curate"
    no_token = subprocess.run([str(curate), "export", str(dataset["data"]), "-f", "messages", "-o", str(tmp_path / "x.jsonl"),
                               "--push-to-hub", "someone/tickets"], capture_output=True, text=True, env=env)
    assert no_token.returncode == 1 and "Traceback" not in no_token.stderr
    assert "--push-to-hub: no Hugging Face token: set HF_TOKEN" in no_token.stderr
    assert not (tmp_path / "x.jsonl").exists()  # refused before any work
    bad = run_curate_many([
        ["export", dataset["data"], "-f", "messages", "-o", tmp_path / "x.csv"],
        ["export", dataset["data"], "-f", "alpaca", "-o", tmp_path / "a.jsonl", "--on-unfit", "skip",
         "--llama-factory-config", tmp_path / "info.yaml"],
        ["export", dataset["data"], "-f", "prompt-completion", "-o", tmp_path / "p.jsonl", "--axolotl-config", tmp_path / "a.yaml"],
        ["export", dataset["data"], "-f", "messages", "-o", tmp_path / "k.jsonl", "--keep-column", "nowhere"],
        ["export", dataset["data"], "-f", "hf", "-o", tmp_path / "by-label", "--split-by", "label"],
    ])
    assert all(p.returncode in (1, 2) and "Traceback" not in p.stderr for p in bad)
    assert "writes .jsonl, .ndjson, .json, .parquet files" in bad[0].stderr
    assert "info.yaml: must end in .json" in bad[1].stderr
    assert "no dataset type for conversational prompt-completion" in bad[2].stderr
    assert "--keep-column: no column or meta key 'nowhere'" in bad[3].stderr
    assert f"row {dataset['multi'][0]}: split None in 'label' is not a split name" in bad[4].stderr  # a chat has no label


# -- adapter portability ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny `train lora` run on the default model: 16 training rows, one epoch of 2 steps."""
    from conftest import run_train

    root = tmp_path_factory.mktemp("lora")
    rows = docstring_corpus()[::23][:20]
    data = write_jsonl(root / "docs.jsonl", [{"text": r["text"][:120], "label": r["label"]} for r in rows])
    run_train("lora", data, "-o", root / "run", "--epochs", "1", "--batch-size", "8", "--micro-batch-size", "4",
              "--max-length", "64", "--val-size", "4", "--seed", "3", "--quiet")
    return root / "run" / "adapter"


def test_adapter_names_the_hub_id_and_smallset_finds_the_local_base(trained, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_LLM_HUB_ID
    card = (trained / "README.md").read_text()
    assert f"base_model: {DEFAULT_LLM_HUB_ID}" in card and "/smallset/models/" not in card
    local = str(resolve_llm().path)
    assert json.loads((trained / BASE_FILE).read_text())["local_path"] == local
    assert base_spec(trained) == local
    # peft loads it on the local base, and the trained LoRA weights change the output
    base = AutoModelForCausalLM.from_pretrained(base_spec(trained), dtype=torch.float32)
    ids = torch.tensor([[1, 422, 1130, 314, 253, 2254]])
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, trained)
        after = model(ids).logits
    assert model.peft_config["default"].base_model_name_or_path == DEFAULT_LLM_HUB_ID
    assert not torch.allclose(before, after)
    # moved to a machine where that cache path does not exist: the packaged default, converted there
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in trained.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    meta = json.loads((moved / BASE_FILE).read_text())
    (moved / BASE_FILE).write_text(json.dumps({**meta, "local_path": str(tmp_path / "gone")}))
    assert base_spec(moved) == local


def test_train_merge_still_finds_the_local_base(trained, tmp_path):
    from conftest import run_train

    run_train("merge", trained, "-o", tmp_path / "merged")
    manifest = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert manifest["models"][0]["path"] == str(resolve_llm().path)
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_bases_without_a_hub_id_keep_their_path(trained, tmp_path):
    copy, folder = tmp_path / "copy", tmp_path / "my-model"
    copy.mkdir(), folder.mkdir()
    config = json.loads((trained / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(folder)}))  # as peft saves
    (copy / "README.md").write_bytes((trained / "README.md").read_bytes())
    record_base(copy, ResolvedModel("llm", folder, "path"))  # a local folder of unknown origin
    assert json.loads((copy / BASE_FILE).read_text())["hub_id"] is None
    assert json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)
    assert base_spec(copy) == str(folder)
    record_base(copy, ResolvedModel("llm", folder, "hub:someone/base-7b"))
    assert json.loads((copy / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/base-7b"
    assert "base_model: someone/base-7b" in (copy / "README.md").read_text()

"""synth: task specs, coverage, the durable journal, and real generation with vLLM on CPU (killed and resumed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import yaml

from curate.errors import InputError
from synth.coverage import plan
from synth.generate import journal_path, plan_samples
from synth.journal import Journal
from synth.task import load_task, parse_task

SYNTH = str(Path(sys.executable).parent / "synth")
TASK = {
    "name": "tickets",
    "instructions": "Write one short customer-support ticket and its category.",
    "n": 16,
    "seeds": [{"text": "I was charged twice.", "label": "billing"}],
    "output": {
        "fields": {"text": {"type": "string", "maxLength": 80}, "label": {"type": "string", "enum": ["billing", "technical", "account", "shipping"]}},
        "user": "{text}", "assistant": "{label}", "label": "{label}",
    },
    "axes": {"label": ["billing", "technical", "account", "shipping"], "tone": ["calm", "angry"]},
    "sampling": {"temperature": 0.8, "max_tokens": 96, "seed": 3},
}


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda t: t.pop("instructions"), "instructions"),
        (lambda t: t["output"]["fields"].update(text={"type": "text"}), "output.fields.text.type"),
        (lambda t: t["axes"].update(tone=[]), "axes.tone"),
        (lambda t: t["output"].update(user="{body}"), "output.user"),
        (lambda t: t.update(n=0), "n"),
        (lambda t: t.update(strategy="magic"), "strategy"),
        (lambda t: t["seeds"].append({"text": "no label"}), "seeds[1]"),
    ],
)
def test_task_spec_errors_name_the_key(tmp_path, change, key):
    task = json.loads(json.dumps(TASK))
    change(task)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(InputError) as err:
        load_task(path)
    assert err.value.field == key
    assert str(path) in str(err.value)


def test_coverage_uses_every_combination_when_n_allows():
    axes = {"a": ["x", "y"], "b": ["1", "2", "3"]}
    combos = Counter(tuple(sorted(p.items())) for p in plan(axes, 12, seed=1))
    assert len(combos) == 6 and set(combos.values()) == {2}
    assert plan(axes, 12, seed=1) == plan(axes, 12, seed=1)
    assert plan(axes, 12, seed=1) != plan(axes, 12, seed=2)


def test_coverage_balances_each_axis_when_n_is_small():
    axes = {"a": [str(i) for i in range(10)], "b": [str(i) for i in range(10)], "c": ["p", "q", "r", "s"]}
    picks = plan(axes, 20, seed=0)
    assert set(Counter(p["a"] for p in picks).values()) == {2}
    assert sorted(Counter(p["c"] for p in picks).values()) == [5, 5, 5, 5]


def test_sample_keys_are_stable_and_distinct():
    task = parse_task(TASK)
    keys = [p.key for p in plan_samples(task, 3)]
    assert len(set(keys)) == 16
    assert keys == [p.key for p in plan_samples(parse_task(TASK), 3)]


def test_journal_drops_a_torn_last_line_and_never_duplicates(tmp_path):
    path = tmp_path / "j.partial.jsonl"
    journal = Journal(path)
    journal.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with open(path, "ab") as fh:
        fh.write(b'{"key": "c", "v"')  # a kill in the middle of a write
    journal = Journal(path)
    assert set(journal.entries) == {"a", "b"}
    journal.append([{"key": "b", "v": 9}, {"key": "c", "v": 3}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["a", "b", "c"]


@pytest.mark.slow
def test_generate_survives_sigkill_and_resumes_without_loss_or_duplicates(tmp_path):
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(TASK))
    out = tmp_path / "out.parquet"
    cmd = [SYNTH, "generate", str(task_file), "-o", str(out), "--batch-size", "4", "--max-model-len", "1024"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    journal = journal_path(out)
    deadline = time.time() + 900
    while time.time() < deadline and first.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.5)
    assert first.poll() is None, first.stderr.read().decode()[-2000:]
    os.killpg(first.pid, signal.SIGKILL)  # the whole group: the engine's workers too
    first.wait()
    done_before = {json.loads(line)["key"] for line in journal.read_text().splitlines() if line.strip()}
    assert 4 <= len(done_before) < 16
    assert not out.exists()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    records = pl.read_parquet(out)
    keys = [json.loads(m)["synth"]["key"] for m in records["meta"]]
    planned = {p.key: p for p in plan_samples(parse_task(TASK), TASK["sampling"]["seed"])}
    assert sorted(keys) == sorted(planned)  # every planned sample once: none lost, none twice
    assert records.height == 16  # structured output: 100% of samples parse
    # Coverage: the label axis decides the label, so each label appears exactly 4 times.
    assert Counter(records["label"]) == {"billing": 4, "technical": 4, "account": 4, "shipping": 4}
    for m, label in zip(records["meta"], records["label"]):
        meta = json.loads(m)
        assert meta["synth"]["axes"]["label"] == label
        assert {"strategy", "prompt_hash", "model", "seed"} <= set(meta["synth"])
    usage = json.loads((tmp_path / "out.parquet.manifest.json").read_text())["parameters"]["usage"]
    assert usage["resumed"] == len(done_before) and usage["generated_this_run"] == 16 - len(done_before)
    assert usage["completion_tokens"] > 0
    assert not journal.exists()


def test_reply_budget_covers_the_longest_reply_the_schema_allows():
    output = parse_task(TASK).output
    budget = output.max_reply_tokens()
    longest = json.dumps({"text": "9" * 80, "label": "shipping"})  # digits: one token each
    assert budget is not None and budget >= len(longest)
    unbounded = json.loads(json.dumps(TASK))
    del unbounded["output"]["fields"]["text"]["maxLength"]
    assert parse_task(unbounded).output.max_reply_tokens() is None


@pytest.mark.slow
def test_replies_cut_off_at_max_tokens_are_finished_so_every_sample_parses(tmp_path):
    """max_tokens 6 cuts every JSON reply; each is asked again with the schema's room, and all 8 parse."""
    task = json.loads(json.dumps(TASK))
    task.update(n=8, sampling={"temperature": 0.8, "max_tokens": 6, "seed": 1})
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(task))
    out = tmp_path / "out.parquet"
    proc = subprocess.run([SYNTH, "generate", str(task_file), "-o", str(out), "--max-model-len", "1024"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no maxLength" not in proc.stdout + proc.stderr
    records = pl.read_parquet(out)
    assert records.height == 8
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    assert manifest["counts"]["unparsable"] == 0
    usage = manifest["parameters"]["usage"]
    assert usage["completion_tokens"] > 6 * 8  # the retries wrote past the first cut
    assert all(len(m[0]["content"]) <= 80 for m in records["messages"].to_list())

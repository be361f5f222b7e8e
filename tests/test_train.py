"""`train lora` and `train merge` on the real default model (SmolLM2-135M-Instruct), on a tiny set.

Training runs go through the installed `train` script, two at a time (each is a few
optimizer steps of 8 short rows); the checks on their outputs run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from curate.models import resolve_llm
from curate.readers import read_records
from conftest import write_jsonl
from train.batches import by_length, collate, length_grouped
from train.cli import main as train_cli
from train.errors import TrainError
from train.split import stratified_split
from train.tokenize import IGNORE, auto_max_length, encode, render

TRAIN = Path(sys.executable).parent / "train"
# Sleeping OpenMP waits: the CLI sets this itself; set here too so that every run is alike.
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
# 16 training rows, 4 validation rows: 2 optimizer steps of 8 rows (2 micro-batches of 4) per epoch.
FAST = ["--batch-size", "8", "--micro-batch-size", "4", "--max-length", "64", "--val-size", "4", "--seed", "7", "--quiet"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]


def rows(n: int = 20) -> list[dict]:
    """Short chats with two labels (3 of 4 'color', 1 of 4 'number'); rows 5 and 17 are long."""
    out = []
    for i in range(n):
        if i % 4:
            user, reply, label = f"Name a thing that is {COLORS[i % 6]}.", f"A {COLORS[i % 6]} ball.", "color"
        else:
            user, reply, label = f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", "number"
        if i in (5, 17):
            reply = " ".join(f"{COLORS[k % 6]} ball number {k}," for k in range(30))
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], "label": label})
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_llm().path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chats.jsonl", rows())


def start(data: Path, out: Path, *args: str) -> subprocess.Popen:
    cmd = [str(TRAIN), "lora", str(data), "-o", str(out), *FAST, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, err[-3000:]
    return err


def manifest(out: Path) -> dict:
    return json.loads((out / "adapter.manifest.json").read_text())


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """Four runs: A and B alike; C interrupted after its first checkpoint, then resumed; D early-stopped.

    A, B, C: one epoch (2 steps), evaluated every step. D: a learning rate 50x too high, patience 1.
    """
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in "ABCD"}
    common = ["--epochs", "1", "--eval-every", "1"]
    a, b = start(data, out["A"], *common), start(data, out["B"], *common)
    out["A_err"], out["B_err"] = finish(a), finish(b)

    c = start(data, out["C"], *common)
    d = start(data, out["D"], "--epochs", "2", "--eval-every", "1", "--patience", "1", "--lr", "1e-2")
    state = out["C"] / "checkpoints" / "last" / "trainer_state.pt"
    while not state.exists() and c.poll() is None:
        time.sleep(0.1)
    c.send_signal(signal.SIGINT)  # Ctrl-C after the first checkpoint
    out["C_interrupted"] = finish(c, expect=130)
    resumed = start(data, out["C"], *common, "--resume")
    out["C_err"], out["D_err"] = finish(resumed), finish(d)
    return out


# -- tokenization, split, batches (no training) -----------------------------------------------


def test_loss_covers_only_the_assistant_replies(tokenizer):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
        {"role": "assistant", "content": "Green."},
    ]
    enc = encode(tokenizer, messages)
    assert len(enc.input_ids) == len(enc.labels)
    targets = [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE]
    eot = tokenizer.eos_token  # <|im_end|>, SmolLM2's end of turn
    assert tokenizer.decode(targets) == f"Blue.{eot}Green.{eot}"
    # Every unmasked label is the token itself; the masked ones are exactly the prompt.
    assert all(label in (IGNORE, tok) for tok, label in zip(enc.input_ids, enc.labels))
    first = next(k for k, label in enumerate(enc.labels) if label != IGNORE)
    prompt = render(tokenizer, messages[:2], add_generation_prompt=True)
    assert tokenizer.decode(enc.input_ids[:first]) == prompt
    # Same tokens as the model's own template, tokenized whole (as a server would), minus the final newline.
    whole = tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]
    assert whole[: len(enc.input_ids)] == enc.input_ids
    assert tokenizer.decode(whole[len(enc.input_ids):]).strip() == ""


def test_truncation_keeps_the_start_and_counts(tokenizer):
    long = rows()[5]["messages"]
    enc = encode(tokenizer, long, max_length=48)
    assert len(enc.input_ids) == 48 and enc.truncated and enc.full_length > 48
    # A long prompt before a short reply: the end is kept, so the reply survives whole.
    ticket = [{"role": "user", "content": " ".join(f"word{k}" for k in range(80))}, {"role": "assistant", "content": "billing"}]
    full = encode(tokenizer, ticket)
    kept = encode(tokenizer, ticket, max_length=24)
    assert kept.truncated and len(kept.input_ids) == 24
    assert kept.input_ids == full.input_ids[-24:] and kept.n_targets == full.n_targets > 0
    assert tokenizer.decode([t for t, lab in zip(kept.input_ids, kept.labels) if lab != IGNORE]).startswith("billing")
    assert auto_max_length([10] * 199 + [1000], cap=2048) == 16  # one outlier does not set the length
    assert auto_max_length([5000] * 10, cap=512) == 512


def test_stratified_split_keeps_every_label_in_validation():
    labels = ["common"] * 20 + ["rare"] * 4
    train, val = stratified_split(labels, fraction=0.1, seed=3)
    assert {labels[i] for i in val} == {"common", "rare"}
    assert len(val) == 2 and sorted(train + val) == list(range(24))
    assert stratified_split(labels, fraction=0.1, seed=3) == (train, val)
    # No labels: a plain random split of the asked size.
    train, val = stratified_split([None] * 30, size=5, seed=1)
    assert len(val) == 5 and not set(train) & set(val)


def test_flagged_rows_train_but_never_validate():
    labels = ["common"] * 20 + ["rare"] * 4
    eligible = [i % 5 != 0 for i in range(20)] + [False, False, False, True]
    train, val = stratified_split(labels, fraction=0.25, seed=3, eligible=eligible)
    assert len(val) == 6 and all(eligible[i] for i in val) and sorted(train + val) == list(range(24))
    # The rare label's one eligible row may validate: its three flagged rows keep it in training.
    assert {labels[i] for i in val} == {"common", "rare"} and {labels[i] for i in train} == {"common", "rare"}
    assert stratified_split(labels, fraction=0.25, seed=3, eligible=[True] * 24) == stratified_split(labels, fraction=0.25, seed=3)
    with pytest.raises(TrainError, match="more rows than the 3 that may be held out"):
        stratified_split(labels, size=5, eligible=[i < 3 for i in range(24)])


def test_prepare_keeps_curation_flags_out_of_validation(tokenizer, tmp_path):
    import polars as pl

    from train.config import LoraTrainConfig
    from train.lora import prepare

    records = read_records(write_jsonl(tmp_path / "flags.jsonl", rows(40))).records
    records = records.with_columns(id=pl.format("row{}", pl.int_range(pl.len())))  # content ids repeat here
    ids = records["id"].to_list()
    issues, conflicts = set(ids[0::6]), set(ids[3::6])  # check-labels' and dedup's flags; NULL is "not flagged"
    records = records.with_columns(
        label_issue=pl.col("id").is_in(list(issues)),
        label_conflict=pl.when(pl.col("id").is_in(list(conflicts))).then(True).otherwise(None),
    )
    plain = prepare(records.drop("label_issue", "label_conflict"), tokenizer, LoraTrainConfig(val_size=8, max_length=64))
    assert plain.flagged == 0 and len(plain.val_ids) == 8  # no flag columns: nothing flagged
    prepared = prepare(records, tokenizer, LoraTrainConfig(val_size=8, max_length=64))
    assert prepared.flagged == len(issues | conflicts) == 14 and len(prepared.val_ids) == 8
    assert not (issues | conflicts) & set(prepared.val_ids) and (issues | conflicts) <= set(prepared.train_ids)
    included = prepare(records, tokenizer, LoraTrainConfig(val_size=8, max_length=64, val_exclude_flagged=False))
    assert included.flagged == 0 and (issues | conflicts) & set(included.val_ids)  # the old split, flags and all
    assert (included.train_ids, included.val_ids) == (plain.train_ids, plain.val_ids)
    mostly = records.with_columns(label_issue=pl.col("id").is_in(ids[:36]))  # + row39 (conflict): 3 unflagged rows for 8
    fallback = prepare(mostly, tokenizer, LoraTrainConfig(val_size=8, max_length=64))
    assert fallback.flagged_may_validate == 37 and (fallback.train_ids, fallback.val_ids) == (included.train_ids, included.val_ids)


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    lengths = [(i * 37) % 200 + 5 for i in range(400)]
    batches = length_grouped(lengths, 8, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert batches == length_grouped(lengths, 8, seed=1, epoch=0)
    assert batches != length_grouped(lengths, 8, seed=1, epoch=1)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.05 * sum(lengths)  # random batches would pad by about 60%


def test_small_sets_get_a_smaller_batch_and_enough_steps():
    from train.config import LoraTrainConfig

    config = LoraTrainConfig()
    for n in (10, 22, 30, 64, 127):
        batch, micro = config.effective_batch(n)
        assert -(-n // batch) >= config.min_steps_per_epoch  # optimizer steps per epoch
        assert batch % micro == 0 and micro <= config.micro_batch_size
    assert config.effective_batch(22) == (2, 2) and config.effective_batch(64) == (8, 4)
    assert config.effective_batch(128) == config.effective_batch(5000) == (16, 4)
    assert LoraTrainConfig(batch_size=8).effective_batch(20) == (8, 4)  # a batch given is used as is


# -- bad input (no training) --------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/model"], "'/no/such/model' does not exist"),
        (["--qlora"], "needs a CUDA GPU"),
        (["--epochs", "6"], "epochs must be between 1 and 5"),
        (["--batch-size", "6"], "must be a multiple of micro_batch_size"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_settings_are_clear_errors(data, tmp_path, args, message):
    result = CliRunner().invoke(train_cli, ["lora", str(data), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bad_data_is_a_clear_error(tmp_path):
    few = write_jsonl(tmp_path / "few.jsonl", rows(9))
    result = CliRunner().invoke(train_cli, ["lora", str(few), "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "9 rows; training needs at least 10" in result.output
    no_reply = rows(12)
    no_reply[7]["messages"] = no_reply[7]["messages"][:1]
    bad = write_jsonl(tmp_path / "bad.jsonl", no_reply)
    result = CliRunner().invoke(train_cli, ["lora", str(bad), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and "line 8" in result.output and "no assistant turn" in result.output


# -- training runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_output_is_a_servable_adapter_with_curves_and_manifest(runs, data):
    out = runs["A"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["r"] == 16 and config["lora_alpha"] == 32
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # portable; the local base:
    assert json.loads((out / "adapter" / "smallset-base.json").read_text())["local_path"] == str(resolve_llm().path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "adapter_model.safetensors"):
        assert (out / "adapter" / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = manifest(out)
    assert m["command"] == "train lora" and m["parameters"]["max_length"] == 64
    assert m["counts"]["train_rows"] == 16 and m["counts"]["validation_rows"] == 4
    assert m["counts"]["truncated_rows"] == 2 and "2 rows are longer than 64 tokens" in runs["A_err"]
    metrics = m["metrics"]
    assert metrics["tokens_per_s"] > 0 and metrics["peak_rss_mib"] > 100 and metrics["best_epoch"] == 1
    assert [e["step"] for e in metrics["evaluations"]] == [1, 2]
    assert metrics["val_loss_per_epoch"][0]["val_loss"] == metrics["evaluations"][-1]["val_loss"]
    assert metrics["best_val_loss"] < metrics["base_val_loss"]  # it learned something
    split = json.loads((out / "split.json").read_text())
    labels = dict(read_records(data).records.select("id", "label").iter_rows())
    assert {labels[i] for i in split["validation"]} == {"color", "number"}  # stratified


@pytest.mark.slow
def test_same_seed_gives_the_same_adapter(runs):
    a, b = adapter(runs["A"]), adapter(runs["B"])
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert manifest(runs["A"])["metrics"]["evaluations"] == manifest(runs["B"])["metrics"]["evaluations"]


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(runs):
    m = manifest(runs["C"])
    assert "--resume" in runs["C_interrupted"]  # the interrupted run says how to continue
    assert m["metrics"]["resumed_from_step"] == 1 and m["counts"]["steps"] == 2
    # Optimizer, scheduler, RNG and data position restored: the same adapter as the uninterrupted run.
    a, c = adapter(runs["A"]), adapter(runs["C"])
    for key in a:
        assert torch.equal(a[key], c[key]), key


@pytest.mark.slow
def test_early_stopping_restores_the_best_adapter(runs, data, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train.lora import validation_loss

    out = runs["D"]
    m = manifest(out)["metrics"]
    evals = m["evaluations"]
    assert m["stopped_early"] and "early stop" in runs["D_err"]
    assert evals[-1]["step"] < 4 and m["best_step"] < evals[-1]["step"]
    assert m["best_val_loss"] == min(e["val_loss"] for e in evals)
    # The saved adapter is the best one, not the last: recompute its validation loss.
    base = AutoModelForCausalLM.from_pretrained(resolve_llm().path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter")
    records = read_records(data).records
    by_id = dict(zip(records["id"].to_list(), records["messages"].to_list()))
    val_ids = json.loads((out / "split.json").read_text())["validation"]
    val = [encode(tokenizer, by_id[i], max_length=64) for i in val_ids]
    batches = [collate([val[i] for i in b], tokenizer.pad_token_id) for b in by_length([len(v.input_ids) for v in val], 4)]
    loss = validation_loss(model, batches, torch.device("cpu"))
    assert loss == pytest.approx(m["best_val_loss"], rel=1e-5)
    assert abs(loss - evals[-1]["val_loss"]) > 1e-3
    last = load_file(out / "checkpoints" / "last" / "adapter_model.safetensors")
    assert any(not torch.equal(last[k], v) for k, v in adapter(out).items())


@pytest.mark.slow
def test_merge_folds_the_adapter_into_the_base_weights(runs, tmp_path):
    merged = tmp_path / "merged"
    result = CliRunner().invoke(train_cli, ["merge", str(runs["A"]), "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert (merged / "config.json").is_file() and (merged / "chat_template.jinja").is_file()
    weights = load_file(merged / "model.safetensors")
    base = load_file(resolve_llm().path / "model.safetensors")
    lora = adapter(runs["A"])
    name = "model.layers.0.self_attn.q_proj.weight"
    a = lora["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = lora["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    expected = base[name].float() + (32 / 16) * b @ a
    assert weights[name].dtype == base[name].dtype  # saved as the base was (bf16)
    assert torch.allclose(weights[name].float(), expected, atol=1e-2)
    assert not torch.equal(weights[name], base[name])

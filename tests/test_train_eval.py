"""`train eval` on a real adapter through the real vLLM CPU engine with LoRA, and its pure parts.

One tiny adapter is trained once for the module (the installed `train lora`, a few optimizer
steps on the default SmolLM2), and one `train eval` run (one engine start) scores base
zero-shot, base k-shot and the adapter; the checks read its outputs. Metrics, targets and
bad input are tested without an engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

from conftest import run_train, write_jsonl
from curate.manifest import Manifest
from curate.models import resolve_llm
from train import metrics as M
from train.cli import main as train_cli
from train.errors import TrainError
from train.evaluate import EvalConfig, make_plan
from train.objective import Objective, parse_target
from train.tokenize import IGNORE, encode

SYSTEM = "Sort the request into fruit or tool. Answer with the category only."
LABELS = ["fruit", "tool"]
FRUITS = ["apple", "banana", "cherry", "mango", "pear", "plum", "grape", "lemon"]
TOOLS = ["hammer", "wrench", "saw", "drill", "chisel", "pliers", "spanner", "file"]


def chat(text: str, label: str | None, system: bool = True) -> dict:
    turns = [{"role": "user", "content": text}]
    if label is not None:
        turns.append({"role": "assistant", "content": label})
    return {"messages": ([{"role": "system", "content": SYSTEM}] if system else []) + turns, "label": label}


def train_rows() -> list[dict]:
    """12 rows sharing one system message: 6 fruit, 6 tool requests."""
    return [chat(f"I would like to buy a {w}.", "fruit") for w in FRUITS[:6]] + \
           [chat(f"Please lend me your {w}.", "tool") for w in TOOLS[:6]]


def test_rows() -> list[dict]:
    """6 held-out rows, worded differently and without the system message (eval adds the shared one)."""
    return [chat(f"Where can I find a fresh {w}?", "fruit", system=False) for w in (*FRUITS[6:], "melon")] + \
           [chat(f"My {w} is broken, can you fix it?", "tool", system=False) for w in (*TOOLS[6:], "ladder")]


test_rows.__test__ = False  # a data helper, not a test


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {"root": root, "train": write_jsonl(root / "train.jsonl", train_rows()),
            "test": write_jsonl(root / "test.jsonl", test_rows())}


@pytest.fixture(scope="module")
def trained(files) -> Path:
    """A real adapter: 10 training rows, 2 validation rows, 3 steps of 4 rows."""
    out = files["root"] / "lora"
    run_train("lora", files["train"], "-o", out, "--epochs", "1", "--batch-size", "4",
              "--micro-batch-size", "4", "--val-size", "2", "--max-length", "64", "--seed", "3", "--quiet")
    return out


@pytest.fixture(scope="module")
def evaluated(trained, files) -> dict:
    """One `train eval` run (one engine start); the objective is an absolute accuracy target."""
    out = files["root"] / "eval"
    proc = run_train("eval", trained, "--test", files["test"], "-o", out,
                     "--metric", "accuracy", "--target", "85%", "--max-model-len", "512", "--quiet")
    report = json.loads((out / "eval.json").read_text())
    return {"out": out, "report": report, "stdout": proc.stdout, "stderr": proc.stderr,
            "predictions": pl.read_parquet(out / "predictions.parquet")}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_llm().path)


# -- through the engine ---------------------------------------------------------------------


@pytest.mark.slow
def test_every_contender_answers_every_test_row(evaluated):
    report, pred = evaluated["report"], evaluated["predictions"]
    n = len(test_rows())
    assert report["task"] == "classification" and report["rows"] == n and report["labels"] == LABELS
    assert set(report["results"]) == {"base", "kshot", "adapter"}
    for name, result in report["results"].items():
        assert result["rows"] == n, name
        rows = pred.filter(pl.col("contender") == name)
        assert sorted(rows["row"].to_list()) == list(range(n)), name
        # Guided choice: every answer is exactly one label, nothing unparsed.
        assert set(rows["prediction"].to_list()) <= set(LABELS) and result["unparsed"] == 0
        assert rows["raw"].to_list() == rows["prediction"].to_list()
        assert sum(map(sum, result["confusion"]["matrix"])) == n
    assert report["usage"]["requests"] == 3 * n
    assert (evaluated["out"] / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((evaluated["out"] / "eval.json.manifest.json").read_text())
    assert manifest["command"] == "train eval" and manifest["counts"]["answers"] == 3 * n
    assert "adapter" in evaluated["stdout"] and "base k-shot" in evaluated["stdout"]  # the results table


@pytest.mark.slow
def test_metrics_agree_with_the_predictions(evaluated):
    report, pred = evaluated["report"], evaluated["predictions"]
    for name, result in report["results"].items():
        rows = pred.filter(pl.col("contender") == name).sort("row")
        assert rows["gold"].to_list() == [r["label"] for r in test_rows()]
        correct = [p == g for p, g in zip(rows["prediction"], rows["gold"])]
        assert rows["correct"].to_list() == correct
        assert result["accuracy"] == pytest.approx(sum(correct) / len(correct))
        f1 = f1_score(rows["gold"].to_list(), rows["prediction"].to_list(), labels=LABELS, average="macro", zero_division=0)
        assert result["macro_f1"] == pytest.approx(f1)
        matrix = result["confusion"]["matrix"]
        assert sum(matrix[i][i] for i in range(len(LABELS))) == sum(correct)


@pytest.mark.slow
def test_objective_verdict_follows_the_adapters_accuracy(evaluated):
    report = evaluated["report"]
    verdict = report["objective"]
    accuracy = report["results"]["adapter"]["accuracy"]
    assert verdict["metric"] == "accuracy" and verdict["required"] == pytest.approx(0.85)
    assert verdict["passed"] == (accuracy >= 0.85) and verdict["actual"] == accuracy
    assert verdict["text"].startswith("PASS" if verdict["passed"] else "FAIL")


@pytest.mark.slow
def test_kshot_prompt_is_built_from_training_rows_only(evaluated, trained, files, tokenizer):
    report = evaluated["report"]
    split = json.loads((trained / "split.json").read_text())
    test_ids = set(evaluated["predictions"]["id"].to_list())
    assert report["k"] == len(LABELS) and len(report["shots"]) == len(LABELS)
    assert set(report["shots"]) <= set(split["train"])  # not validation rows, not test rows
    assert not set(report["shots"]) & (set(split["validation"]) | test_ids)
    assert report["test_rows_in_training"] == 0 and report["system"] == SYSTEM
    # The engine saw longer prompts for k-shot (the shots are in them) than for the plain prompt.
    pred = evaluated["predictions"]
    base = pred.filter(pl.col("contender") == "base").sort("row")["prompt_tokens"].to_list()
    kshot = pred.filter(pl.col("contender") == "kshot").sort("row")["prompt_tokens"].to_list()
    assert all(k > b + 10 for k, b in zip(kshot, base))

    plan = make_plan(trained, files["test"], EvalConfig(), None, None, Manifest(command="test"))
    train_texts = {m["content"] for r in train_rows() for m in r["messages"] if m["role"] == "user"}
    test_texts = [r["messages"][0]["content"] for r in test_rows()]
    for conversation, text in zip(plan.conversations["kshot"], test_texts):
        assert conversation[0] == {"role": "system", "content": SYSTEM}
        assert conversation[-1] == {"role": "user", "content": text}
        users = [m["content"] for m in conversation[1:-1] if m["role"] == "user"]
        assert len(users) == len(LABELS) and set(users) <= train_texts
        assert not set(users) & set(test_texts)
        shot_labels = [m["content"] for m in conversation[1:-1] if m["role"] == "assistant"]
        assert sorted(shot_labels) == LABELS  # one shot per label


@pytest.mark.slow
def test_engine_prompts_are_rendered_as_in_training(evaluated, tokenizer):
    """vLLM tokenized each prompt exactly as `train lora` tokenizes the same row before its reply."""
    report, pred = evaluated["report"], evaluated["predictions"]
    assert report["rendering_mismatches"] == 0
    adapter = pred.filter(pl.col("contender") == "adapter").sort("row")["prompt_tokens"].to_list()
    for row, seen in zip(test_rows(), adapter):
        messages = [{"role": "system", "content": SYSTEM}, *row["messages"]]  # eval adds the shared system message
        enc = encode(tokenizer, messages)
        prompt_length = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
        assert seen == prompt_length


# -- objective targets (no engine) -------------------------------------------------------------


RESULTS = {"base": {"accuracy": 0.40}, "kshot": {"accuracy": 0.50}, "adapter": {"accuracy": 0.85}}


@pytest.mark.parametrize(
    "target, required, passed",
    [
        ("0.85", 0.85, True),  # exactly at the threshold passes
        ("85%", 0.85, True),
        ("85", 0.85, True),
        ("0.9", 0.90, False),
        ("kshot+30", 0.80, True),
        ("+30", 0.80, True),  # a bare margin is over k-shot
        ("+36", 0.86, False),
        ("+30 points over kshot", 0.80, True),
        ("base+5", 0.45, True),
        ("zero-shot + 46", 0.86, False),
        ("base +45", 0.85, True),
    ],
)
def test_objective_verdict_follows_the_target_form(target, required, passed):
    verdict = Objective.parse("accuracy", target).verdict(RESULTS)
    assert verdict["required"] == pytest.approx(required)
    assert verdict["passed"] is passed
    assert verdict["text"].startswith("PASS" if passed else "FAIL")


@pytest.mark.parametrize("target", ["150%", "base+5 over kshot", "about 0.8", "+"])
def test_unreadable_targets_are_clear_errors(target):
    with pytest.raises(TrainError, match="target"):
        parse_target(target)


def test_objective_metric_must_be_measured_for_the_task():
    with pytest.raises(TrainError, match="rouge_l"):
        Objective.parse("rouge_l", "+5").check_metric(("accuracy", "macro_f1"))
    with pytest.raises(TrainError, match="both --metric and --target"):
        EvalConfig(metric="accuracy").objective()


# -- metrics on known strings (no engine) -------------------------------------------------------


def test_exact_match_and_token_f1_normalize_like_squad():
    assert M.exact_match("The Eiffel Tower", "eiffel tower.") == 1.0
    assert M.exact_match("Paris", "Paris, France") == 0.0
    assert M.exact_match("Paris", None) == 0.0
    # gold "eiffel tower paris", prediction "tower in paris": 2 common tokens, P = 2/3, R = 2/3.
    assert M.token_f1("The Eiffel Tower, Paris", "a tower in Paris") == pytest.approx(2 / 3)
    assert M.token_f1("red apple", "green pear") == 0.0
    assert M.token_f1("", "") == 1.0 and M.token_f1("x", None) == 0.0
    # Repeated tokens match as often as both sides have them: 2 common of 3 and 3, so P = R = 2/3.
    assert M.token_f1("b c c", "c c c") == pytest.approx(2 / 3)
    scores = M.exact_metrics(["Paris", "Rome"], ["paris", "Milan"])
    assert scores == {"exact_match": 0.5, "token_f1": 0.5}


def test_rouge_l_is_the_lcs_f_measure_with_stemming():
    # LCS of "the cat sat on the mat" and "the cat was on the mat" is 5 of 6 tokens each.
    assert M.rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]) == [pytest.approx(5 / 6)]
    # Stemming: "running dogs" matches "run dog".
    assert M.rouge_l(["running dogs"], ["run dog"]) == [pytest.approx(1.0)]
    # Order matters: the LCS of "a b c d" and "d c b a" is one token: P = R = 1/4.
    assert M.rouge_l(["alpha beta gamma delta"], ["delta gamma beta alpha"]) == [pytest.approx(0.25)]
    assert M.rouge_l(["something"], [None]) == [0.0]
    assert M.free_text_metrics(["a b", "c d"], ["a b", "x y"]) == {"rouge_l": pytest.approx(0.5)}


def test_classification_metrics_count_unparsed_answers_as_errors():
    gold = ["billing", "billing", "shipping", "account"]
    pred = ["billing", None, "shipping", "billing"]
    result = M.classification_metrics(gold, pred, ["billing", "shipping", "account", "technical"])
    assert result["accuracy"] == 0.5 and result["unparsed"] == 1
    assert result["confusion"]["predicted"][-1] == M.NONE_LABEL
    assert result["confusion"]["matrix"][0] == [1, 0, 0, 0, 1]  # billing: one right, one unparsed
    # F1 per label: billing 1/2 (P 1/2, R 1/2), shipping 1, account 0, technical 0 -> mean 5/12.
    assert result["macro_f1"] == pytest.approx((0.5 + 1.0) / 4)
    assert M.parse_label("  Shipping. ", ["billing", "shipping"]) == "shipping"
    assert M.parse_label("I think it is billing, not shipping", ["shipping", "billing"]) == "billing"
    assert M.parse_label("no idea", ["billing"]) is None


# -- bad input (no engine) ---------------------------------------------------------------------


def invoke(*args: str | Path):
    result = CliRunner().invoke(train_cli, ["eval", *map(str, args)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.slow
def test_adapter_against_another_base_model_is_a_clear_error(trained, files, tmp_path):
    other = tmp_path / "other-model"  # the same files in another folder: not the base the adapter records
    other.mkdir()
    for f in resolve_llm().path.iterdir():
        (other / f.name).symlink_to(f)
    output = invoke(trained, "--test", files["test"], "--model", other)
    assert "was trained on" in output and "only fits the base model" in output
    # Naming the recorded base itself is fine up to the engine; a missing one is an error of its own.
    output = invoke(trained, "--test", files["test"], "--model", "/no/such/model")
    assert "/no/such/model" in output


@pytest.mark.slow
def test_missing_test_file_is_a_clear_error(trained, tmp_path):
    output = invoke(trained, "--test", tmp_path / "nowhere.jsonl")
    assert "nowhere.jsonl" in output


@pytest.mark.slow
def test_test_rows_without_a_reply_or_label_are_clear_errors(trained, tmp_path):
    rows = test_rows()
    rows[3]["messages"] = rows[3]["messages"][:1]  # no assistant turn
    bad = write_jsonl(tmp_path / "noreply.jsonl", rows)
    output = invoke(trained, "--test", bad)
    assert "line 4" in output and "no assistant turn" in output
    unlabeled = write_jsonl(tmp_path / "nolabel.jsonl", [{"text": "Where is my parcel?", "label": None}] * 2)
    output = invoke(trained, "--test", unlabeled)
    assert "nolabel.jsonl" in output


def test_not_an_adapter_is_a_clear_error(files):
    output = invoke(files["root"], "--test", files["test"])
    assert "not a LoRA adapter" in output

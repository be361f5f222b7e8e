"""`train eval` beyond one global number: per-slice metrics, counterfactual flips, inference cost, eval over time.

One tiny real adapter (the installed `train lora`, three optimizer steps on the default SmolLM2,
as in test_train_eval.py) and one `train eval` run through the real vLLM engine with two test
sets, three --slice-by fields and a --terms file; the checks recompute every figure from the
files the run wrote (predictions, counterfactual rows). Term swapping, length buckets and bad
input are tested without an engine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from conftest import run_train, write_jsonl
from curate.errors import InputError
from curate.identity_terms import DEFAULT, GROUPS, load_terms
from train.cli import main as train_cli
from train.slices import gap, length_buckets

SYSTEM = "Sort the request into fruit or tool. Answer with the category only."
LABELS = ["fruit", "tool"]
FRUITS = ["apple", "banana", "cherry", "mango", "pear", "plum"]
TOOLS = ["hammer", "wrench", "saw", "drill", "chisel", "pliers"]
TERMS = {"gender": [["wife", "husband"], ["she", "he"], ["father", "mother"]],
         "object": [["grape", "spanner"], "lemon/hammer"]}  # a swap that changes the request's meaning: answers should flip


def chat(text: str, label: str, system: bool = True, **fields) -> dict:
    turns = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    return {"messages": ([{"role": "system", "content": SYSTEM}] if system else []) + turns, "label": label, **fields}


def train_rows() -> list[dict]:
    return [chat(f"I would like to buy a {w}.", "fruit") for w in FRUITS] + \
           [chat(f"Please lend me your {w}.", "tool") for w in TOOLS]


# The older test set: a source column, a meta field (channel), identity terms in rows 0, 1, 4, 6 (gender)
# and 0, 1 (object). Rows 2, 3, 5, 7 name no term of TERMS ("old" in row 5 is only in the default list).
JUNE = [
    chat("Where can I find a fresh grape for my wife?", "fruit", False, source="shop", channel="email"),
    chat("My husband wants a ripe lemon today.", "fruit", False, source="shop", channel="chat"),
    chat("Do you sell melon?", "fruit", False, source="forum", channel="chat"),
    chat("Is the kiwi in season now, and how much does a big box of them cost at your market?", "fruit", False,
         source="forum", channel="email"),
    chat("My file is broken, can you fix it for my father?", "tool", False, source="shop", channel="email"),
    chat("The old ladder is broken, please repair it before the weekend so that we can paint the house.", "tool",
         False, source="forum", channel="chat"),
    chat("She needs a new trowel for the garden shed.", "tool", False, source="shop", channel="chat"),
    chat("Can I rent a sander?", "tool", False, source="forum", channel="email"),
]
SWAPPED_ROWS = [0, 1, 4, 6]
DECEMBER = [
    chat("Please deliver a basket of oranges.", "fruit", False),
    chat("Have you got any figs?", "fruit", False),
    chat("A bag of apricots, please.", "fruit", False),
    chat("My screwdriver snapped in half.", "tool", False),
    chat("I need a spirit level for the shelves.", "tool", False),
    chat("Do you stock mallets?", "tool", False),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import yaml

    root = tmp_path_factory.mktemp("slices")
    terms = root / "terms.yaml"
    terms.write_text(yaml.safe_dump(TERMS))
    return {"root": root, "train": write_jsonl(root / "train.jsonl", train_rows()), "terms": terms,
            "june": write_jsonl(root / "test_june.jsonl", JUNE), "december": write_jsonl(root / "test_dec.jsonl", DECEMBER)}


@pytest.fixture(scope="module")
def trained(files) -> Path:
    out = files["root"] / "lora"
    run_train("lora", files["train"], "-o", out, "--epochs", "1", "--batch-size", "4", "--micro-batch-size", "4",
              "--val-size", "2", "--max-length", "64", "--seed", "3", "--quiet")
    return out


@pytest.fixture(scope="module")
def evaluated(trained, files) -> dict:
    """One `train eval` run (one engine start): two test sets, three slice fields, the test's term file."""
    out = files["root"] / "eval"
    proc = run_train("eval", trained, "--test", f"june={files['june']}", "--test", f"december={files['december']}",
                     "-o", out, "--slice-by", "source", "--slice-by", "channel", "--slice-by", "length",
                     "--terms", files["terms"], "--latency-rows", "3", "--metric", "accuracy", "--target", "+10",
                     "--max-model-len", "512", "--quiet")
    return {"out": out, "stdout": proc.stdout, "report": json.loads((out / "eval.json").read_text()),
            "predictions": pl.read_parquet(out / "predictions.parquet"),
            "flips": pl.read_parquet(out / "counterfactual.parquet")}


def answers(predictions: pl.DataFrame, contender: str) -> list[str]:
    return predictions.filter(pl.col("contender") == contender).sort("row")["prediction"].to_list()


# -- through the engine ---------------------------------------------------------------------


@pytest.mark.slow
def test_slices_recompute_from_the_predictions(evaluated):
    report, pred = evaluated["report"], evaluated["predictions"]
    assert list(report["slices"]) == ["source", "channel", "length"]
    gold = [r["label"] for r in JUNE]
    for field in ("source", "channel"):
        sl = report["slices"][field]
        keys = [r[field] for r in JUNE]
        assert [s["value"] for s in sl["slices"]] == sorted(set(keys)) and sl["metric"] == "accuracy"
        for contender in ("base", "kshot", "adapter"):
            predicted = answers(pred, contender)
            per = {}
            for s in sl["slices"]:
                rows = [i for i, k in enumerate(keys) if k == s["value"]]
                per[s["value"]] = sum(predicted[i] == gold[i] for i in rows) / len(rows)
                figure = s["metrics"][contender]["accuracy"]
                assert s["rows"] == len(rows) and figure["value"] == pytest.approx(per[s["value"]])
                assert figure["low"] <= figure["value"] <= figure["high"]
            summary = sl["summary"][contender]["accuracy"]
            assert summary["worst"] == pytest.approx(min(per.values())) and summary["best"] == pytest.approx(max(per.values()))
            assert per[summary["worst_slice"]] == pytest.approx(min(per.values()))
            assert summary["difference"] == pytest.approx(max(per.values()) - min(per.values()))
            assert summary["ratio"] == (pytest.approx(min(per.values()) / max(per.values())) if max(per.values()) else None)
        assert sl["worst"]["contender"] == "adapter" and sl["worst"]["worst"] == sl["summary"]["adapter"]["accuracy"]["worst"]
        widest = max(sl["summary"].values(), key=lambda s: s["accuracy"]["difference"])["accuracy"]["difference"]
        assert sl["largest_gap"]["difference"] == pytest.approx(widest)
    length = report["slices"]["length"]
    assert sum(s["rows"] for s in length["slices"]) == len(JUNE) and len(length["slices"]) == 3
    assert [s["value"].split(":")[0] for s in length["slices"]] == ["short", "medium", "long"]
    bounds = [tuple(map(int, re.findall(r"\d+", s["value"]))) for s in length["slices"]]
    assert all(a[-1] < b[0] for a, b in zip(bounds, bounds[1:]))  # buckets in order, not overlapping
    png = evaluated["out"] / "slices.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy by source" in evaluated["stdout"] and "worst slice" in evaluated["stdout"]


@pytest.mark.slow
def test_counterfactual_flips_are_counted_from_the_swapped_answers(evaluated):
    report, pred, flips = evaluated["report"], evaluated["predictions"], evaluated["flips"]
    cf = report["counterfactual"]
    assert cf["terms"].endswith("terms.yaml") and cf["rows_swapped"] == len(SWAPPED_ROWS)
    assert cf["groups"] == {"gender": 4, "object": 2}
    assert sorted(flips["row"].unique().to_list()) == SWAPPED_ROWS
    first = flips.filter((pl.col("row") == 0) & (pl.col("contender") == "adapter")).row(0, named=True)
    assert first["swapped"] == "Where can I find a fresh spanner for my husband?"
    for contender in ("base", "kshot", "adapter"):
        rows = flips.filter(pl.col("contender") == contender).sort("row")
        assert rows["answer"].to_list() == [answers(pred, contender)[i] for i in SWAPPED_ROWS]
        assert set(rows["swapped_answer"].to_list()) <= set(LABELS)  # guided choice holds for the swapped prompts too
        assert rows["flipped"].to_list() == [a != b for a, b in zip(rows["answer"], rows["swapped_answer"])]
        counted = cf["flips"][contender]
        assert counted["flipped"] == sum(rows["flipped"]) and counted["rate"] == pytest.approx(sum(rows["flipped"]) / 4)
        assert counted["low"] <= counted["rate"] <= counted["high"]
        objects = rows.filter(pl.col("groups").str.contains("object"))
        assert counted["by_group"]["object"] == {"rows": 2, "flipped": sum(objects["flipped"])}
    assert len(cf["examples"]) == cf["flips"]["adapter"]["flipped"]
    assert "counterfactual check" in evaluated["stdout"]


@pytest.mark.slow
def test_cost_per_answer_is_measured_and_consistent(evaluated):
    report, pred = evaluated["report"], evaluated["predictions"]
    cost = report["cost"]
    for contender in ("base", "kshot", "adapter"):
        c = cost["contenders"][contender]
        rows = pred.filter(pl.col("contender") == contender)
        assert c["answers"] == len(JUNE) and c["prompt_tokens"] == pytest.approx(rows["prompt_tokens"].mean())
        assert c["completion_tokens"] == pytest.approx(rows["completion_tokens"].mean()) and c["completion_tokens"] >= 1
        assert c["tokens"] == pytest.approx(c["prompt_tokens"] + c["completion_tokens"])
        assert c["batch_seconds"] == pytest.approx(report["seconds"][contender] / len(JUNE))
        assert c["latency_requests"] == 3 and 0 < c["latency_seconds"] <= c["latency_p90_seconds"] < 60
    kshot, adapter = cost["contenders"]["kshot"], cost["contenders"]["adapter"]
    assert kshot["prompt_tokens"] > adapter["prompt_tokens"] + 10  # the shots ride along in every k-shot request
    ratio = cost["kshot_over_adapter"]
    assert ratio["prompt_tokens"] == pytest.approx(kshot["prompt_tokens"] / adapter["prompt_tokens"]) and ratio["tokens"] > 1
    assert ratio["latency_seconds"] == pytest.approx(kshot["latency_seconds"] / adapter["latency_seconds"])
    assert report["objective"]["cost"] == cost["text"]
    assert " ".join(cost["text"].split()) in " ".join(evaluated["stdout"].split())  # printed under the verdict
    # The answers the verdict is about stay counted apart from the extra requests (swaps, latency probes).
    assert report["usage"]["requests"] == 3 * len(JUNE)
    assert report["usage_total"]["requests"] == 3 * (len(JUNE) + len(DECEMBER) + len(SWAPPED_ROWS)) + 3 * (3 + 1)


@pytest.mark.slow
def test_two_test_sets_give_an_over_time_table(evaluated):
    report, out = evaluated["report"], evaluated["out"]
    assert report["test"].endswith("test_june.jsonl") and report["rows"] == len(JUNE)  # the first set is the verdict's
    assert list(report["test_sets"]) == ["june", "december"]
    later = pl.read_parquet(out / "predictions.december.parquet")
    assert later.height == 3 * len(DECEMBER)
    history = report["over_time"]
    assert history["metric"] == "accuracy" and history["first"] == "june"
    assert [r["test"] for r in history["rows"]] == ["june", "december"]
    assert [r["rows"] for r in history["rows"]] == [len(JUNE), len(DECEMBER)]
    june, december = history["rows"]
    for contender in ("base", "kshot", "adapter"):
        assert june["values"][contender] == pytest.approx(report["results"][contender]["accuracy"])
        gold = [r["label"] for r in DECEMBER]
        accuracy = sum(p == g for p, g in zip(answers(later, contender), gold)) / len(gold)
        assert december["values"][contender] == pytest.approx(accuracy)
        assert report["test_sets"]["december"]["results"][contender]["accuracy"] == pytest.approx(accuracy)
        change = december["change"][contender]
        assert change["value"] == pytest.approx(accuracy - june["values"][contender])
        assert change["low"] <= change["value"] <= change["high"]
        assert june["change"] == {}
    assert "over time" in evaluated["stdout"]
    manifest = json.loads((out / "eval.json.manifest.json").read_text())
    assert {Path(i["path"]).name for i in manifest["inputs"]} >= {"test_june.jsonl", "test_dec.jsonl"}


# -- bad input (no engine) ---------------------------------------------------------------------


@pytest.mark.slow
def test_slicing_by_a_field_no_row_has_is_a_clear_error(trained, files):
    result = CliRunner().invoke(train_cli, ["eval", str(trained), "--test", str(files["june"]), "--slice-by", "region"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "test_june.jsonl" in result.output and "field 'region'" in result.output and "channel" in result.output


def test_test_sets_with_one_name_are_refused(files):
    result = CliRunner().invoke(train_cli, ["eval", str(files["root"]), "--test", str(files["june"]),
                                            "--test", f"test_june={files['december']}"])
    assert result.exit_code == 2 and "named 'test_june'" in result.output


def test_bad_term_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "terms.yaml"
    bad.write_text("gender: [[he, she], [man]]\n")
    with pytest.raises(InputError, match=r"terms.yaml, field 'gender.1': expected a pair"):
        load_terms(bad)
    bad.write_text("- he\n- she\n")
    with pytest.raises(InputError, match="mapping of groups"):
        load_terms(bad)
    with pytest.raises(InputError, match="no such identity-term file"):
        load_terms(tmp_path / "missing.yaml")


# -- pure parts ---------------------------------------------------------------------------------


def test_identity_terms_swap_in_one_pass_keeping_case():
    assert set(GROUPS) == {"gender", "age", "nationality", "religion"}
    text, groups = DEFAULT.swap("He told her husband: SHE is a young Christian.")
    assert text == "She told his wife: HE is a old Muslim." and groups == ["gender", "age", "religion"]
    assert DEFAULT.swap("Hello there, the shed is locked.") == ("Hello there, the shed is locked.", [])
    assert DEFAULT.swap("Theo and Shelby")[1] == []  # whole words only
    assert DEFAULT.find("my mother is Jewish") == [("mother", "gender"), ("Jewish", "religion")]
    assert "she" in DEFAULT.terms["gender"] and "Muslim" in DEFAULT.terms["religion"]


def test_length_buckets_cut_at_terciles_and_gap_follows_metricframe():
    keys, order = length_buckets([3, 4, 5, 9, 10, 11, 20, 30, 40])
    assert order == ["short: 3-5 words", "medium: 9-11 words", "long: 20-40 words"]
    assert keys[:3] == [order[0]] * 3 and keys[-1] == order[2]
    assert length_buckets([5, 5, 5])[1] == ["all: 5 words"]
    figures = gap([("a", 0.5), ("b", 1.0), ("c", 0.75)])
    assert (figures["worst_slice"], figures["best_slice"]) == ("a", "b")
    assert figures["difference"] == 0.5 and figures["ratio"] == 0.5
    assert gap([("a", 0.0), ("b", 0.0)])["ratio"] is None

"""Heuristic filters (curate.filters): every rule, its reason code and its detail, on hand-made records."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.drops import DROPS_SCHEMA
from curate.filters import (
    LANGUAGE_COLUMN,
    ORDER,
    REASONS,
    TOKENS_COLUMN,
    FilterConfig,
    UserRule,
    describe_reason,
    filter_records,
    identify_languages,
    repeated_ngram_ratio,
)
from curate.readers import read_records
from curate.records import CORE_SCHEMA, with_ids

# Heuristics alone: no tokenizer, no language model (each test that needs one turns it on).
NO_TOKENS = {"min_tokens": None, "max_tokens": None}

CLEAN_ANSWERS = [
    "The capital of France is Paris.",
    "Sure. Use a list comprehension:\n```python\nsquares = [x * x for x in range(10)]\n```\nThat gives the first ten squares.",
    "Format it with an f-string such as `f\"{name}\"`, or:\n```python\ngreeting = f\"Hello {name}\"\n```",
    "The ratio is $\\frac{1}{2}\\text{cm}$, and $x^{n}$ grows fast.",
    "See [Name of the paper](https://example.org) and the survey [1].",
    "I got an A. Plan B (the fallback) is fine too.",
    "Steps: 1) mix, 2) bake, 3) serve.",
    "Use `<div>` tags in HTML; the list is [1, 2, 3].",
]


def chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return ([{"role": "system", "content": system}] if system else []) + turns


def records(*rows: dict, extra: dict[str, list] | None = None) -> pl.DataFrame:
    """A record set from rows of {messages, label?}, with real ids, plus optional stage columns."""
    data = [{"id": "", "messages": r["messages"], "label": r.get("label"), "source": "test", "meta": "{}"} for r in rows]
    df = with_ids(pl.DataFrame(data, schema=CORE_SCHEMA))
    return df.with_columns(**{k: pl.Series(k, v) for k, v in (extra or {}).items()})


def clean_rows() -> list[dict]:
    return [{"messages": chat(f"Question {i}: tell me something useful.", a)} for i, a in enumerate(CLEAN_ANSWERS)]


def run(df: pl.DataFrame, **config):
    return filter_records(df, FilterConfig(**{**NO_TOKENS, **config}))


def drop_of(result, record_id: str) -> dict:
    rows = result.drops.filter(pl.col("id") == record_id)
    assert rows.height == 1, f"{record_id} was not dropped: {result.drops}"
    return rows.row(0, named=True)


def test_clean_rows_pass_every_heuristic():
    df = records(*clean_rows())
    result = run(df)
    assert result.drops.height == 0, result.drops.select("reason", "detail").to_dicts()
    assert result.kept["id"].to_list() == df["id"].to_list()
    assert result.counts == {code: 0 for code in FilterConfig(**NO_TOKENS).reason_codes()}
    assert TOKENS_COLUMN not in result.kept.columns and LANGUAGE_COLUMN not in result.kept.columns


PLANTED = [
    # (reason, messages, config, substrings of the detail)
    ("role_order", [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                    {"role": "assistant", "content": "Hello."}], {}, ["user,user,assistant"]),
    ("role_order", [{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."},
                    {"role": "assistant", "content": "Hello."}], {}, ["user,system,assistant"]),
    ("role_order", chat("hi", "Hello.") + [{"role": "user", "content": "Thanks."}], {}, ["user,assistant,user"]),
    ("role_order", [{"role": "assistant", "content": "Hello."}], {}, ["roles assistant"]),
    ("empty_response", chat("Say something.", "  \n\t "), {}, ["empty assistant response"]),
    ("empty_response", chat("One.", "Fine.") + chat("Two.", ""), {}, ["assistant turn 2"]),
    ("placeholder", chat("Write to the customer.", "Dear {{customer}}, your order shipped."), {}, ['"{{customer}}"', "assistant"]),
    ("placeholder", chat("Write to the customer.", "Dear {customer_name}, thanks."), {}, ['"{customer_name}"']),
    ("placeholder", chat("Write to the customer.", "Dear <CUSTOMER NAME>, thanks."), {}, ['"<CUSTOMER NAME>"']),
    ("placeholder", chat("Write a letter.", "Meet me on [INSERT DATE] at noon."), {}, ['"[INSERT DATE]"']),
    ("placeholder", chat("Write a letter.", "Best regards,\n[Your Name]"), {}, ['"[Your Name]"']),
    ("placeholder", chat("Greet ${user} please.", "Hello there, friend."), {}, ['"${user}"', "user turn"]),
    ("truncated_response", chat("Write code.", "Here you go:\n```python\nprint('hi')"), {}, ["unclosed ``` code fence"]),
    ("truncated_response", chat("Explain.", "It works (mostly because of caching"), {}, ["unclosed '(' (1 opened, 0 closed)"]),
    ("truncated_response", chat("List them.", "Apples, pears,"), {}, ["ends with ','"]),
    ("truncated_response", chat("List them.", "The reasons are:"), {}, ["ends with ':'"]),
    ("truncated_response", chat("Why?", "Because it is cheap and"), {}, ["ends on a dangling 'and'"]),
    ("truncated_response", chat("Why?", "It was found in the"), {}, ["ends on a dangling 'the'"]),
    ("non_alphanumeric", chat("Draw.", "#### $$$$ %%%% &&&& **** @@@@"), {}, ["of characters are symbols > max 0.5"]),
    ("repetitive", chat("Tell a story.", "the cat sat on the mat. " * 12), {}, ["of word 3-grams are repeats > max 0.3"]),
    ("label_not_allowed", chat("Is this spam?", "It is."), {"allowed_labels": ("ham", "eggs")}, ["label 'spam' not in allowed: ham, eggs"]),
]


@pytest.mark.parametrize("reason,messages,config,details", PLANTED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PLANTED)])
def test_planted_row_is_dropped_with_its_reason(reason, messages, config, details):
    planted = {"messages": messages, "label": "spam" if reason == "label_not_allowed" else None}
    clean = [{**r, "label": "ham"} for r in clean_rows()]
    df = records(*clean, planted)
    result = run(df, **config)
    assert result.drops.height == 1, result.drops.select("reason", "detail").to_dicts()
    drop = drop_of(result, df["id"][-1])
    assert drop["reason"] == reason and drop["step"] == "filter"
    for text in details:
        assert text in drop["detail"], drop["detail"]
    assert result.counts[reason] == 1
    assert result.kept["id"].to_list() == df["id"].to_list()[:-1]


def test_measured_values_are_in_the_detail():
    df = records(
        {"messages": chat("Draw.", "#### $$$$ %%%% abcd")},
        {"messages": chat("Go.", "one two three one two three one two three")},
    )
    result = run(df)
    details = dict(zip(result.drops["reason"], result.drops["detail"]))
    text = "Draw.\n#### $$$$ %%%% abcd"  # what is measured: user and assistant turns, one per line
    symbols = sum(not (c.isalnum() or c.isspace()) for c in text)
    assert details["non_alphanumeric"] == f"{round(symbols / len(text), 2)} of characters are symbols > max 0.5"
    # 7 word 3-grams, 3 distinct: 4 repeats
    assert details["repetitive"] == f"{round(4 / 7, 2)} of word 3-grams are repeats > max 0.3"


def test_repeated_ngram_ratio():
    ratios = repeated_ngram_ratio(pl.Series(["a b c a b c", "a b", "", None, "Alpha, beta! alpha beta"]), 2)
    # "a b c a b c": 2-grams ab bc ca ab bc -> 5, 3 distinct; "alpha beta alpha beta": 3 grams, 2 distinct
    assert ratios.to_list() == pytest.approx([2 / 5, 0.0, 0.0, 0.0, 1 / 3])


def test_label_required_drops_missing_label():
    df = records({"messages": chat("Is this spam?", "No."), "label": "ham"}, {"messages": chat("And this?", "Yes.")})
    result = run(df, allowed_labels=("ham", "spam"))
    drop = drop_of(result, df["id"][1])
    assert drop["reason"] == "label_not_allowed" and drop["detail"] == "no label (allowed: ham, spam)"
    assert run(df).drops.height == 0  # no allowed labels: any label, or none, is fine


def test_score_threshold():
    df = records(*clean_rows()[:4], extra={"judge_score": [5, 3, 2, None]})
    result = run(df, min_scores={"judge_score": 3})
    assert result.kept["judge_score"].to_list() == [5, 3]
    assert result.counts["low_score:judge_score"] == 2
    assert drop_of(result, df["id"][2])["detail"] == "judge_score 2 < min 3"
    assert drop_of(result, df["id"][3])["detail"] == "no judge_score value (min 3)"
    assert drop_of(result, df["id"][2])["reason"] == "low_score:judge_score"


def test_missing_score_column_is_an_error():
    df = records(*clean_rows()[:2])
    with pytest.raises(ValueError, match="judge_score"):
        run(df, min_scores={"judge_score": 3})
    with pytest.raises(ValueError, match="'source' is String, not numeric"):
        run(df, min_scores={"source": 1})


def test_user_expression_rule():
    df = records(*clean_rows()[:3], extra={"judge_score": [4.5, 1.0, None]})
    rule = UserRule("good_judge", expr="judge_score >= 2 AND source = 'test'")
    result = run(df, rules=[rule])
    assert result.kept["id"].to_list() == [df["id"][0]]
    for i in (1, 2):  # below the bar, and NULL (not true)
        drop = drop_of(result, df["id"][i])
        assert drop["reason"] == "rule:good_judge"
        assert drop["detail"] == "expression is not true: judge_score >= 2 AND source = 'test'"
    assert result.counts["rule:good_judge"] == 2


def test_where_keeps_what_review_push_where_would_pick(tmp_path):
    """`curate filter --where SQL`: the syntax of `review push --where`, one rule `rule:where`, checked first."""
    from click.testing import CliRunner

    from curate.cli import main

    df = records(*clean_rows()[:3], extra={"review_outcome": ["accepted", "rejected", None]})
    result = run(df, where="review_outcome <> 'rejected'")
    assert result.kept["id"].to_list() == [df["id"][0]]  # NULL is not true, as in --rule
    assert drop_of(result, df["id"][1])["reason"] == "rule:where"
    path = tmp_path / "reviewed.parquet"
    df.write_parquet(path)
    out = tmp_path / "kept.parquet"
    done = CliRunner().invoke(main, ["filter", str(path), "--where", "review_outcome = 'accepted'", "--min-tokens", "0",
                                     "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert pl.read_parquet(out)["id"].to_list() == [df["id"][0]]
    assert json.loads(Path(f"{out}.manifest.json").read_text())["parameters"]["where"] == "review_outcome = 'accepted'"


def test_user_callable_rule(tmp_path, monkeypatch):
    (tmp_path / "myrules.py").write_text(textwrap.dedent("""
        import polars as pl

        def short_answers(df):
            answer = df["messages"].list.last().struct.field("content")
            return answer.str.len_chars() < 40

        def wrong_length(df):
            return pl.Series([True])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    df = records({"messages": chat("Hi.", "Hello!")},
                 {"messages": chat("Hi.", "Hello! It is a pleasure to meet you; how can I help you today?")})
    result = run(df, rules=[UserRule("short", callable="myrules:short_answers")])
    assert result.kept["id"].to_list() == [df["id"][0]]
    drop = drop_of(result, df["id"][1])
    assert drop["reason"] == "rule:short" and drop["detail"] == "myrules:short_answers returned false"
    with pytest.raises(ValueError, match="rule 'bad' gave 1 values for 2 rows"):
        run(df, rules=[UserRule("bad", callable="myrules:wrong_length")])
    with pytest.raises(ValueError, match="cannot import module 'nosuchmodule'"):
        run(df, rules=[UserRule("gone", callable="nosuchmodule:f")])


def test_user_rule_validation():
    with pytest.raises(ValueError, match="exactly one of expr or callable"):
        UserRule("both", expr="true", callable="a:b")
    with pytest.raises(ValueError, match="rule 'broken': invalid expression"):
        UserRule("broken", expr="label = = 'x'")
    with pytest.raises(ValueError, match="package.module:function"):
        UserRule("path", callable="just_a_name")
    with pytest.raises(ValueError, match="rule 'num' must give booleans"):
        run(records(*clean_rows()[:2]), rules=[UserRule("num", expr="1 + 1")])


@pytest.mark.parametrize("config,parameter", [
    ({"min_tokens": -1}, "min_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ({"max_repeated_ngram_ratio": 1.5}, "max_repeated_ngram_ratio"),
    ({"repeated_ngram": 0}, "repeated_ngram"),
    ({"max_non_alnum_ratio": -0.1}, "max_non_alnum_ratio"),
    ({"min_language_confidence": 2}, "min_language_confidence"),
    ({"languages": ("english",)}, "languages"),
    ({"allowed_labels": ()}, "allowed_labels"),
    ({"min_scores": {"judge_score": float("nan")}}, "min_scores"),
    ({"rules": [UserRule("x", expr="true"), UserRule("x", expr="false")]}, "duplicate rule names"),
])
def test_config_validation_names_the_parameter(config, parameter):
    with pytest.raises(ValueError, match=parameter):
        FilterConfig(**config)


def test_unknown_language_code_is_an_error():
    with pytest.raises(ValueError, match="languages: unknown code"):
        run(records(*clean_rows()[:1]), languages=("qq",))


def test_first_failing_rule_wins_in_documented_order():
    both = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Dear {name}"},
            {"role": "assistant", "content": "Okay and"}]  # role_order, placeholder and truncated
    later = chat("Write.", "Dear {name}, it was the")  # placeholder and truncated
    df = records({"messages": both}, {"messages": later}, *clean_rows()[:2])
    result = run(df)
    assert drop_of(result, df["id"][0])["reason"] == "role_order"
    assert drop_of(result, df["id"][1])["reason"] == "placeholder"
    assert result.drops.height == 2  # dropped once each
    assert list(REASONS) == list(ORDER)
    assert ORDER.index("role_order") < ORDER.index("placeholder") < ORDER.index("truncated_response") < ORDER.index("too_long")


def test_rules_can_be_turned_off():
    planted = [chat("Say.", " "), chat("Write.", "Dear {name},"), chat("Draw.", "#### $$$$ %%%%"),
               chat("Story.", "go go go go go go go go go go")]
    df = records(*({"messages": m} for m in planted))
    assert run(df).drops.height == 4
    result = run(df, check_empty_response=False, check_placeholders=False, check_truncated=False,
                 check_role_order=False, max_non_alnum_ratio=None, max_repeated_ngram_ratio=None)
    assert result.drops.height == 0 and result.counts == {}


def test_drops_table_schema_and_ids():
    df = records(*clean_rows()[:2], {"messages": chat("Say.", "")})
    result = run(df)
    assert result.drops.schema == pl.Schema(DROPS_SCHEMA)
    assert result.drops["id"].to_list() == [df["id"][2]]
    assert result.drops["duplicate_of"].null_count() == 1


def test_tokens_counted_with_the_default_model_tokenizer():
    from transformers import AutoTokenizer

    from curate.models import resolve_llm

    long_answer = ("Paris is the capital and most populous city of France. It lies on the Seine river, in the north of "
                   "the country, and has been a centre of finance, diplomacy, commerce, fashion and science for centuries.")
    df = records({"messages": chat("Capital of France?", "Paris.")}, {"messages": chat("Tell me about Paris.", long_answer)},
                 {"messages": chat("?", "Ok")})
    result = filter_records(df, FilterConfig(min_tokens=3, max_tokens=20))
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm().path)

    def count(messages):
        return sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages)

    expected = [count(m) for m in df["messages"].to_list()]
    assert expected[0] <= 20 < expected[1] and expected[2] < 3
    assert result.kept["id"].to_list() == [df["id"][0]]
    assert result.kept[TOKENS_COLUMN].to_list() == [expected[0]]
    assert result.kept.schema[TOKENS_COLUMN] == pl.Int64
    assert drop_of(result, df["id"][1])["detail"] == f"{expected[1]} tokens > max 20"
    assert drop_of(result, df["id"][1])["reason"] == "too_long"
    assert drop_of(result, df["id"][2])["detail"] == f"{expected[2]} tokens < min 3"
    assert drop_of(result, df["id"][2])["reason"] == "too_short"


def test_language_filter():
    df = records(
        {"messages": chat("What is the capital of France?", "The capital of France is Paris, a large and beautiful city.")},
        {"messages": chat("Quelle est la capitale de la France ?", "La capitale de la France est Paris, une très belle ville.")},
    )
    result = run(df, languages=("en",))
    assert result.kept[LANGUAGE_COLUMN].to_list() == ["en"]
    drop = drop_of(result, df["id"][1])
    assert drop["reason"] == "wrong_language"
    assert drop["detail"].startswith("fr (0.9") and drop["detail"].endswith("not in en")
    both = run(df, languages=("en", "fr"))
    assert both.kept[LANGUAGE_COLUMN].to_list() == ["en", "fr"]
    unsure = run(df, languages=("en", "fr"), min_language_confidence=0.9999999)
    assert unsure.drops.height == 2
    assert "at confidence" in unsure.drops["detail"][0] and "< min 0.9999999" in unsure.drops["detail"][0]


def test_batched_language_id_matches_py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    texts = ["Bonjour, comment allez-vous ?", "Hello, how are you today?", "Der Hund läuft schnell über die Straße.",
             "El perro corre rápido por la calle.", "这是一个中文句子。", "ПРИВЕТ КАК ДЕЛА", "", "12345", "ok"]
    langs, confidence = identify_languages(texts)
    for text, lang, conf in zip(texts, langs, confidence):
        ref_lang, ref_conf = reference.classify(text)
        assert (lang, conf) == (ref_lang, pytest.approx(ref_conf, abs=1e-4)), text


def test_read_records_and_default_config(tmp_path):
    path = tmp_path / "raw.jsonl"
    rows = [{"prompt": "What is 2 + 2?", "completion": "2 + 2 = 4."},
            {"prompt": "Write a note.", "completion": "Hi [Your Name], see you at"},
            {"prompt": "Name a colour.", "completion": "Blue."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = read_records(path).records
    result = filter_records(df)  # the defaults: heuristics plus 2..2048 tokens
    assert result.kept.height == 2 and result.kept[TOKENS_COLUMN].min() >= 2
    assert result.drops["reason"].to_list() == ["placeholder"]
    assert set(result.counts) == {"role_order", "empty_response", "placeholder", "truncated_response",
                                  "non_alphanumeric", "repetitive", "too_short", "too_long"}


def test_empty_input():
    result = filter_records(records(), FilterConfig(**NO_TOKENS))
    assert result.kept.height == 0 and result.drops.height == 0


def test_describe_reason():
    assert describe_reason("too_long") == REASONS["too_long"]
    assert describe_reason("low_score:judge_score") == REASONS["low_score:<column>"]
    assert describe_reason("rule:short") == REASONS["rule:<name>"]

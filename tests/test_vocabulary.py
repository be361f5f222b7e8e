"""One vocabulary across `curate`, `synth`, `train` and `smallset`: a flag means one thing everywhere, and a
renamed flag keeps its old name, hidden, for one release (on the command line and as a recipe key).

Parsing only, against the real commands: no model loads, nothing runs but `curate models` with a hub id
that is not there (an error at once).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from curate.renamed_flags import RenamedOption
from recipes.options import command_args
from test_help_examples import COMMANDS  # tests/ is on the path, as pytest puts it there

RENAMED = {  # command -> old flag -> new flag
    ("curate", "models"): {"--llm": "--model"},
    ("curate", "filter"): {"--tokenizer": "--model", "--allowed-labels": "--labels"},
    ("synth", "generate"): {"--num": "--size"},
    ("curate", "audit"): {"--task": "--task-spec"},
    ("curate", "export"): {"--keep": "--keep-column"},
    ("train", "lora"): {"--alpha": "--lora-alpha"},
    ("train", "curve"): {"--alpha": "--lora-alpha"},
    ("curate", "drift"): {"--fail-on-drift": "--strict", "--auc-threshold": "--max-auc",
                          "--label-js-threshold": "--max-label-js", "--length-ks-threshold": "--max-length-ks",
                          "--language-js-threshold": "--max-language-js"},
}
BY_PATH = {path: command for path, command in COMMANDS}


def _visible(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def test_a_short_flag_and_a_long_flag_mean_one_thing_on_every_command():
    """`-n` is `--size` wherever it exists (it was `--num` in synth), and no command shows an old name of its own."""
    longs: dict[str, set[str]] = {}
    for _, command in COMMANDS:
        for param in _visible(command):
            long = next((o for o in param.opts if o.startswith("--")), None)
            for short in (o for o in param.opts if not o.startswith("--")):
                longs.setdefault(short, set()).add(long)
    assert {short: names for short, names in longs.items() if len(names) > 1} == {}
    assert longs["-n"] == {"--size"} and longs["-o"] == {"--output"}
    for path, renamed in RENAMED.items():  # an old name may be another command's name for its own concept
        assert {o for p in _visible(BY_PATH[path]) for o in p.opts + p.secondary_opts} & set(renamed) == set(), path


CONCEPTS = ("--alpha", "--json", "--task", "--keep", "--model", "--labels", "--where", "--embedder", "--seed",
            "--output", "--fields", "--strict", "--against", "--name", "--workspace")


def _kind(option: click.Option) -> str:
    if option.is_flag and not option.count:
        return "flag" + ("" if option.flag_value in (True, False) else f"={option.flag_value}")
    return {"IntRange": "int", "IntParamType": "int", "FloatRange": "float", "FloatParamType": "float"}.get(
        type(option.type).__name__, type(option.type).__name__)


def test_a_flag_takes_one_kind_of_value_on_every_command():
    """`--alpha` was LoRA's alpha in `train` and a significance level in `curate drift`; `--json` a flag in
    `review status` and a path elsewhere; `--task` a task spec file in `audit` and a task type in `train`;
    `--keep` a survivor rule in `dedup` and columns in `export`. One meaning, one kind of value, now."""
    kinds: dict[str, dict[str, list[str]]] = {}
    for path, command in COMMANDS:
        for param in _visible(command):
            for flag in set(param.opts) & set(CONCEPTS):
                kinds.setdefault(flag, {}).setdefault(_kind(param), []).append(" ".join(path))
    assert {flag: found for flag, found in kinds.items() if len(found) > 1} == {}
    assert len(kinds["--json"]["Path"]) >= 3 and len(kinds["--alpha"]["float"]) == 2  # review status, drift, audit
    assert all(not p[1].startswith("train") for p in kinds["--alpha"]["float"])


@pytest.mark.parametrize("path", list(RENAMED), ids=" ".join)
def test_an_old_flag_still_works_with_a_note_and_is_hidden(path, capsys, tmp_path, monkeypatch):
    command = BY_PATH[path]
    monkeypatch.chdir(tmp_path)
    head = ["x.parquet"] if path != ("curate", "models") else []
    if path == ("synth", "generate"):
        head = ["task.yaml", "-o", "out.parquet"]
    elif path == ("curate", "filter"):
        head += ["-o", "out.parquet"]
    elif path == ("curate", "drift"):
        head += ["--against", "y.parquet"]
    elif path in (("curate", "export"), ("train", "lora"), ("train", "curve")):
        head += ["-o", "out"] + (["--test", "t.jsonl"] if path == ("train", "curve") else [])
        head += ["--format", "messages"] if path == ("curate", "export") else []
    (tmp_path / "7").write_text("")  # a value for options that take an existing file
    for old, new in RENAMED[path].items():
        target = next(p for p in command.params if isinstance(p, click.Option) and new in p.opts)
        value = [] if target.is_flag else ["7"]
        by_new = command.make_context(" ".join(path), [*head, new, *value]).params[target.name]
        capsys.readouterr()
        by_old = command.make_context(" ".join(path), [*head, old, *value]).params[target.name]
        assert by_old == by_new and by_old not in (None, False), (old, by_old)
        renamed = next(p for p in command.params if isinstance(p, RenamedOption) and p.opts == [old])
        assert capsys.readouterr().err.strip() == renamed.note()
        assert renamed.note().startswith(f"note: {old} is now {new}; the old name goes in ")
        with pytest.raises(click.UsageError, match=f"{old} is the old name of {new}: give only {new}"):
            command.make_context(" ".join(path), [*head, old, *value, new, *value])
        assert not re.search(rf"{old}(?![\w-])", command.get_help(click.Context(command, info_name=path[-1])))


def test_a_user_sees_the_note_on_stderr_and_the_command_does_the_same(tmp_path):
    """A real run: `curate models --llm` reaches the model resolver exactly as `--model` does."""
    curate = str(Path(sys.executable).parent / "curate")
    old, new = (subprocess.run([curate, "models", flag, "nobody/does-not-exist"], capture_output=True, text=True,
                               cwd=tmp_path) for flag in ("--llm", "--model"))
    assert old.returncode == new.returncode == 1 and "nobody/does-not-exist" in new.stderr
    assert old.stderr.splitlines()[0].startswith("note: --llm is now --model")
    assert old.stderr.splitlines()[1:] == new.stderr.splitlines() and old.stdout == new.stdout == ""
    assert "--llm" not in new.stderr


def test_an_old_recipe_key_is_rendered_with_the_new_flag_and_a_note(capsys):
    """Recipes validate through the commands: `num:` and `tokenizer:` keep working, as `--size` and `--model`."""
    generate, filter_ = BY_PATH[("synth", "generate")], BY_PATH[("curate", "filter")]
    kwargs = {"path": Path("recipe.yaml")}
    assert command_args(generate, {"num": 48}, where="data.synth.options", **kwargs) == ["--size", "48"]
    assert command_args(generate, {"size": 48}, where="data.synth.options", **kwargs) == ["--size", "48"]
    assert command_args(filter_, {"tokenizer": "default"}, where="curate.2.filter", **kwargs) == ["--model", "default"]
    err = capsys.readouterr().err
    assert "note: recipe.yaml, field 'data.synth.options.num': 'num' is now 'size'" in err
    assert "field 'curate.2.filter.tokenizer': 'tokenizer' is now 'model'" in err
    assert "options.size" not in err
    from curate.errors import InputError

    with pytest.raises(InputError) as err:  # the list of known keys shows the new names only
        command_args(generate, {"nmu": 1}, where="data.synth.options", **kwargs)
    assert "size" in str(err.value) and "num," not in str(err.value) and "renamed" not in str(err.value)


def test_one_condition_syntax_filter_keeps_what_review_push_routes_and_check_labels_trusts():
    """`curate filter --where SQL` (and `--rule`), `review push --where` and `check-labels --trusted` read one
    polars SQL syntax on the same columns, `origin` (synthetic or real) included on data that lacks it."""
    import polars as pl

    from curate.conditions import condition_mask
    from curate.filters import Filter
    from curate.records import CORE_SCHEMA, with_ids
    from curate.review.routing import Route, route
    from curate.step_cli import build_config

    where = "origin = 'synthetic' OR label = 'billing'"
    turns = [{"role": "user", "content": "My card was charged twice."}, {"role": "assistant", "content": "billing"}]
    rows = with_ids(pl.DataFrame([
        {"id": "", "messages": turns, "label": label, "source": source, "meta": "{}"}
        for label, source in [("billing", "real"), ("shipping", "synth:tickets"), ("account", "real")]],
        schema=CORE_SCHEMA))
    assert "origin" not in rows.columns
    filter_ = BY_PATH[("curate", "filter")]
    for flag in (["--where", where], ["--rule", f"picked={where}"]):
        ctx = filter_.make_context("curate filter", ["in.parquet", "-o", "out.parquet", *flag, "--min-tokens", "0",
                                                     "--max-tokens", "0"])
        config = build_config(Filter, {k: v for k, v in ctx.params.items() if k not in ("input", "output")})
        kept = Filter(config).run(rows).kept["id"].to_list()
        assert kept == route(rows, Route(policy="filter", where=where))["id"].to_list(), flag
        assert kept == rows.filter(condition_mask(rows, where))["id"].to_list() == [rows["id"][0], rows["id"][1]]

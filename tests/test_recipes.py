"""Recipes: validation before anything runs, stage planning and caching keys, the bundled recipes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from curate.errors import InputError
from recipes.spec import load_recipe
from recipes.stages import plan

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "recipes").glob("*.yaml"))


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    """A recipe built from `recipe`, with a copy of the bundled example data beside it."""
    if not (tmp_path / "examples").exists():
        shutil.copytree(ROOT / "recipes" / "examples", tmp_path / "examples")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def base_recipe(**overrides) -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "bring_your_own.yaml").read_text())
    recipe["eval"] = {}  # no ablation: the changes below replace the steps it names
    recipe.update(overrides)
    return recipe


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_recipes_are_valid_and_plan_every_stage(path, tmp_path):
    recipe = load_recipe(path)
    stages = plan(recipe, tmp_path)
    names = [s.name for s in stages]
    assert names[-2:] == ["eval", "report"]
    variants = [f"no-{name}:train" for name in recipe.ablate]
    assert names[names.index("train") + 1: -2] == [n for n in names if ":" in n]  # ablation variants after training
    assert all(v in names for v in variants)
    assert ("synth" in names) == (recipe.data.synth is not None)
    assert ("audit" in names) == (recipe.data.synth is not None)  # synthetic rows are audited before training
    assert ("review" in names) == (recipe.review is not None)
    decon = next(s for s in stages if s.name == "decontaminate")
    assert str(recipe.resolve(recipe.data.test)) in decon.commands[0]  # always against the held-out set


def test_a_review_section_without_a_route_sends_people_the_suspects(tmp_path):
    """`review: {}` routes synthetic and flagged rows (`--route suspects`); a route the recipe names wins."""
    def push_args(review):
        stages = plan(load_recipe(write_recipe(tmp_path, base_recipe(review=review))), tmp_path / "run")
        return next(s for s in stages if s.name == "review").params["push"]

    default = push_args({})
    assert default[default.index("--route") + 1] == "suspects"
    named = push_args({"push": {"route": "synthetic"}})
    assert named[named.index("--route") + 1] == "synthetic" and named.count("--route") == 1


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"curate": [{"dedup": {"methd": ["exact"]}}]}, "curate.0.dedup.methd", "has no option 'methd'"),
        ({"curate": [{"select": {"size": "many"}}]}, "curate.0.select.size", "neither a number of rows nor 'auto'"),
        ({"curate": [{"sort": {}}]}, "curate", "unknown step 'sort'"),
        ({"curate": [{"decontaminate": {"against": "x.jsonl"}}]}, "curate.0.decontaminate.against", "set by the recipe runner"),
        ({"train": {"epochs": "three"}}, "train.epochs", "not a valid integer"),
        ({"train": {"resume": True}}, "train.resume", "set by the recipe runner"),
        ({"objective": {"task": "classification", "metric": "rouge_l", "labels": ["a"], "target": 0.5}},
         "objective", "does not fit task"),
        ({"objective": {"task": "classification", "metric": "accuracy", "target": 0.5}}, "objective", "lists its labels"),
        ({"data": {"test": "examples/support_tickets_test.jsonl"}}, "data", "at least one source"),
        ({"data": {"real": [{"path": "examples/nope.jsonl"}], "test": "examples/support_tickets_test.jsonl"}},
         "data.real.0.path", "does not exist"),
        ({"trian": {}}, "trian", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_recipe_fails_before_anything_runs_naming_the_key(tmp_path, change, field, words):
    path = write_recipe(tmp_path, base_recipe(**change))
    with pytest.raises(InputError) as err:
        plan(load_recipe(path), tmp_path / "run")
    assert err.value.field == field
    assert words in err.value.reason
    assert str(path) in str(err.value)
    assert not (tmp_path / "run").exists()


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nobjective: [unclosed\n")
    with pytest.raises(InputError) as err:
        load_recipe(path)
    assert err.value.line is not None and err.value.line >= 2


def test_stage_keys_follow_the_content_of_inputs_and_the_options(tmp_path):
    path = write_recipe(tmp_path, base_recipe())
    first = {s.name: s.key(tmp_path / "run") for s in plan(load_recipe(path), tmp_path / "run")}
    again = {s.name: s.key(tmp_path / "run") for s in plan(load_recipe(path), tmp_path / "run")}
    assert first == again
    # another run folder: same keys (paths inside the run folder do not count)
    elsewhere = {s.name: s.key(tmp_path / "other") for s in plan(load_recipe(path), tmp_path / "other")}
    assert elsewhere == first
    # an option of one step changes that step's key only (later ones change through its output)
    changed = base_recipe()
    changed["curate"][-1]["select"]["size"] = 20
    keys = {s.name: s.key(tmp_path / "run") for s in plan(load_recipe(write_recipe(tmp_path, changed)), tmp_path / "run")}
    assert keys["select"] != first["select"]
    assert all(keys[n] == first[n] for n in ("real", "merge", "dedup", "decontaminate", "filter"))
    # the raw data's content changes the first stage's key
    export = tmp_path / "examples" / "helpdesk_export.jsonl"
    export.write_text(export.read_text() + export.read_text().splitlines()[0] + "\n")
    keys = {s.name: s.key(tmp_path / "run") for s in plan(load_recipe(write_recipe(tmp_path, base_recipe())), tmp_path / "run")}
    assert keys["real"] != first["real"]


def test_smallset_check_knows_a_finished_stage_whatever_path_names_the_recipe(tmp_path, monkeypatch):
    """By content and run folder: the recipe named relatively, absolutely, or from another folder is one recipe."""
    import re
    import subprocess
    import sys

    smallset = str(Path(sys.executable).parent / "smallset")
    path = write_recipe(tmp_path, base_recipe())
    run = tmp_path / "run"
    done = subprocess.run([smallset, "run", "recipe.yaml", "--run-dir", "run", "--until", "real"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, recipe, run_dir in ((tmp_path, "recipe.yaml", "run"), (elsewhere, str(path), str(run)),
                                 (elsewhere, "../recipe.yaml", "../run")):
        listed = subprocess.run([smallset, "check", recipe, "--run-dir", run_dir], cwd=cwd, capture_output=True,
                                text=True)
        assert listed.returncode == 0, listed.stderr
        status = dict(re.findall(r"^\s*\d+\.\s+(\S+)\s+(done|to run)", listed.stdout + listed.stderr, flags=re.M))
        assert status["real"] == "done" and status["merge"] == "to run", (cwd, recipe, listed.stdout)


def test_a_review_server_that_cannot_start_is_a_clear_run_error(tmp_path):
    """The port is taken (another server, an old run's): the stage says so at once, with no traceback."""
    import socket

    from recipes.commands import RunError
    from recipes.review_stage import ensure_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RunError) as err:
            ensure_server(tmp_path / "ws", port, say=lambda m: None)
    assert f"port {port}" in str(err.value) and "already in use" in str(err.value)
    assert "review: {port: N}" in str(err.value)

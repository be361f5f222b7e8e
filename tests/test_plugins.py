"""Plugins: a package installed beside smallset adds a curate step and a filter rule, through entry points alone.

The plugin in tests/plugins/step_plugin is pip-installed (`--target`, as a user's `pip install` would lay it
out) into a temporary folder on PYTHONPATH; the real `curate` and `smallset` commands then find it. Nothing
in smallset's code names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.drops import read_drops
from curate.manifest import read_manifest
from tests.test_recipes import base_recipe, write_recipe

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLUGIN = ROOT / "tests" / "plugins" / "step_plugin"

ROWS = [
    {"prompt": "WHY HAS MY ORDER NOT ARRIVED YET", "completion": "Sorry about that: it ships today."},
    {"prompt": "How do I reset my password?", "completion": "Use the link on the login page."},
    {"prompt": "Hi", "completion": "Hello! How can I help?"},
    {"prompt": "Can I change the delivery address?", "completion": "Yes, until the parcel leaves the warehouse."},
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin, installed as pip installs a package (its dist-info carries the entry points)."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, work / "src")  # pip builds in the source tree; keep the repository clean
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    assert (target / "smallset_shouting-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def run(tool: str, *args, site: Path | None, ok: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site) if site else ""}
    proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_an_installed_step_is_a_curate_command_with_its_options_drops_and_manifest(site, data, tmp_path):
    listing = run("curate", "--help", site=site).stdout
    assert "shouting" in listing and "Drop rows whose prompt is shouted" in listing
    assert "--max-upper-share" in run("curate", "shouting", "--help", site=site).stdout

    out = tmp_path / "calm.parquet"
    proc = run("curate", "shouting", data, "--max-upper-share", "0.5", "-o", out, site=site)
    assert "kept 3 of 4 rows" in proc.stderr
    kept = pl.read_parquet(out)
    assert kept.height == 3 and all("WHY" not in m[0]["content"] for m in kept["messages"].to_list())
    drops = read_drops(out)
    assert drops["reason"].to_list() == ["shouted"] and drops["step"].to_list() == ["shouting"]
    manifest = read_manifest(out)
    assert manifest["command"] == "curate shouting"
    assert manifest["parameters"] == {"max_upper_share": 0.5, "min_letters": 8}
    assert manifest["counts"]["dropped_shouted"] == 1 and manifest["counts"]["shouted"] == 1
    assert manifest["inputs"][0]["path"] == str(data)

    bad = run("curate", "shouting", data, "--max-upper-share", "lots", "-o", tmp_path / "x.parquet", site=site, ok=False)
    assert "--max-upper-share" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_without_the_plugin_the_step_does_not_exist(data, tmp_path):
    proc = run("curate", "shouting", data, "-o", tmp_path / "x.parquet", site=None, ok=False)
    assert "No such command 'shouting'" in proc.stderr


def test_an_installed_rule_joins_curate_filter_its_order_and_its_reasons(site, data, tmp_path):
    assert "--min-prompt-words" in run("curate", "filter", "--help", site=site).stdout
    assert "few_prompt_words" in run("curate", "filter", "--help", site=site).stdout  # the check order lists it
    out = tmp_path / "filtered.parquet"
    run("curate", "filter", data, "--min-prompt-words", "3", "--min-tokens", "0", "--max-tokens", "0", "-o", out, site=site)
    drops = read_drops(out)
    assert drops["reason"].to_list() == ["few_prompt_words"] and drops["detail"].to_list() == ["1 words < min 3"]
    manifest = read_manifest(out)
    assert manifest["parameters"]["min_prompt_words"] == 3
    assert "few_prompt_words" in manifest["parameters"]["reason_order"]
    # Off by default: the rule changes nothing unless asked.
    run("curate", "filter", data, "--min-tokens", "0", "--max-tokens", "0", "-o", tmp_path / "all.parquet", site=site)
    assert pl.read_parquet(tmp_path / "all.parquet").height == len(ROWS)


def test_a_recipe_uses_the_plugin_step_and_its_keys_are_checked(site, tmp_path):
    recipe = base_recipe(curate=[{"shouting": {"max-upper-share": 0.5}}, {"filter": {"min-prompt-words": 2}}, {"select": {}}])
    path = write_recipe(tmp_path, recipe)
    proc = run("smallset", "check", path, "--run-dir", tmp_path / "run", site=site, cwd=tmp_path)
    assert "shouting" in proc.stdout + proc.stderr

    recipe["curate"][0] = {"shouting": {"loud": 1}}
    path = write_recipe(tmp_path, recipe)
    bad = run("smallset", "check", path, "--run-dir", tmp_path / "run", site=site, ok=False, cwd=tmp_path)
    assert "curate.0.shouting.loud" in bad.stderr and "has no option 'loud'" in bad.stderr
    assert "max-upper-share" in bad.stderr  # the step's options are listed


def test_an_installed_strategy_is_accepted_by_task_files_and_writes_the_request(site, tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text("name: calls\ninstructions: Write support calls.\nn: 2\nstrategy: interview\n"
                    "output: {fields: {text: {type: string}, reply: {type: string}}, user: '{text}', assistant: '{reply}'}\naxes: {mood: [calm, angry]}\n")
    script = ("import json, sys; from synth.task import load_task; from synth.prompts import build_chat; "
              "t = load_task(sys.argv[1]); print(json.dumps(build_chat(t, 0, {'mood': 'angry'})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", script, str(task)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    chat = json.loads(proc.stdout)
    assert chat[1] == {"role": "user", "content": "Write sample 1 as a caller would say it on the phone (mood angry)."}
    assert "Write support calls." in chat[0]["content"]
    without = subprocess.run([sys.executable, "-c", script, str(task)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert without.returncode != 0 and "unknown strategy 'interview'" in without.stderr


def test_a_plugin_may_not_take_a_built_in_name(tmp_path, monkeypatch):
    """An entry point named like a built-in step would change what every recipe means: refused, naming the plugin."""
    from curate import plugins

    dist = tmp_path / "rogue-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rogue\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[smallset.steps]\ndedup = rogue:Dedup\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.clear_cache()
    try:
        with pytest.raises(plugins.PluginError, match="plugin 'rogue' registers step 'dedup'"):
            plugins.registered("steps")
    finally:
        monkeypatch.undo()
        plugins.clear_cache()
    assert plugins.registered("steps")["dedup"] == "curate.dedup.pipeline:Dedup"


def test_the_built_ins_pyproject_declares_are_the_ones_a_plain_checkout_finds():
    """pyproject.toml registers smallset's own steps, rules and strategies; the fallback tables (for a checkout that
    was never pip-installed) must say the same, or the two would drift apart."""
    import tomllib

    from curate.plugins import BUILTINS, GROUPS
    from synth.strategies import BUILTINS as STRATEGIES

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[GROUPS["steps"]] == BUILTINS["steps"]
    assert declared[GROUPS["rules"]] == BUILTINS["rules"]
    assert declared[GROUPS["strategies"]] == STRATEGIES

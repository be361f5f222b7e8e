"""One Engine protocol, its capability flags and the registry, against real engines.

Two real engines, each started once for the module: the in-process vLLM engine (in a
subprocess, since it spawns workers; started without LoRA, as `synth` and `curate score`
start it) and vLLM's OpenAI server through `synth serve`, serving a LoRA adapter made
here (peft, random weights, so that its answers differ from the base model's). Every
flag an engine sets is checked against what the engine does, and what it lacks against
the error it raises. The registry is tested with the built-ins and with a plugin package
(tests/plugins/engine_plugin: a module plus its dist-info with an entry point), found the
way pip would install it: on the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from curate import plugins
from curate.engines import BUILTINS, CAPABILITIES, GROUP, Engine, EngineNotFoundError, UnsupportedError, engine_class, \
    engine_names, open_engine
from curate.errors import SmallsetError
from curate.llm import EndpointEngine, LLMEngine, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "engine_plugin"
SYNTH = str(Path(sys.executable).parent / "synth")
GREEDY = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=24, seed=0)
QUESTION = [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "What colour is the sky?"}]
COLOURS = ["red", "green", "blue"]
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}}, "required": ["colour"]}
HI = [[{"role": "user", "content": "hi there"}]]


# -- the registry (no LLM) -----------------------------------------------------------------


def test_builtins_are_found_even_without_installed_entry_points():
    assert {"vllm", "endpoint", "ray"} <= set(engine_names())
    assert engine_class("vllm") is LLMEngine and engine_class("endpoint") is EndpointEngine
    for cls in (LLMEngine, EndpointEngine):
        assert all(isinstance(getattr(cls, flag), bool) for flag in CAPABILITIES)


def test_pyproject_registers_the_builtins_as_entry_points():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][GROUP] == BUILTINS


def test_a_plugin_engine_is_found_through_its_entry_point(monkeypatch):
    assert "echo" not in engine_names()
    monkeypatch.syspath_prepend(str(PLUGIN))  # as if pip had installed the plugin package
    plugins.clear_cache()  # a package installed while this process runs: look again
    assert "echo" in engine_names()
    with open_engine("echo", prefix="> ") as engine:
        assert isinstance(engine, Engine)
        [reply] = engine.chat(HI)
        assert reply.text == "> hi there"
        assert engine.usage["requests"] == 1
        # It honours no capability: each one asked for is refused by name, not ignored.
        asked = {"structured_output": {"json_schema": SCHEMA}, "choices": {"choices": COLOURS},
                 "lora": {"lora": ("tiny", 1, "/nowhere")}, "logprobs": {"logprobs": True}}
        for capability, kwargs in asked.items():
            with pytest.raises(UnsupportedError) as err:
                engine.chat(HI, **kwargs)
            assert str(err.value) == f"the echo engine cannot {CAPABILITIES[capability]}"
        assert engine.usage["requests"] == 1  # refused before anything ran
    monkeypatch.undo()
    plugins.clear_cache()
    assert "echo" not in engine_names()


def test_a_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch):
    dist = tmp_path / "rogue-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rogue\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\nvllm = smallset_echo_engine:EchoEngine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.clear_cache()
    try:
        with pytest.raises(EngineNotFoundError) as err:
            engine_class("vllm")
    finally:
        monkeypatch.undo()
        plugins.clear_cache()
    assert "registers engine 'vllm'" in str(err.value) and "rogue" in str(err.value)


def test_unknown_engines_and_options_are_named():
    with pytest.raises(EngineNotFoundError) as err:
        open_engine("nope")
    assert "no engine named 'nope'" in str(err.value) and "endpoint, ray, vllm" in str(err.value)
    with pytest.raises(UnsupportedError) as err:
        open_engine("endpoint", url="http://127.0.0.1:9/v1", max_model_len=1024)
    assert "the endpoint engine has no option 'max_model_len'" in str(err.value)
    with pytest.raises(UnsupportedError) as err:
        open_engine("endpoint")
    assert str(err.value) == "the endpoint engine needs 'url'"


def synth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PLUGIN), **(env or {})}
    return subprocess.run([SYNTH, *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_cli_opens_a_plugin_engine_by_name(tmp_path):
    proc = synth("prompt", "--engine", "echo", "--engine-option", "prefix=echo: ", "hello")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "echo: hello"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    refused = synth("prompt", "--engine", "echo", "--json-schema", str(schema), "hello")
    assert refused.returncode == 1 and "Error: the echo engine cannot constrain a reply to a JSON schema" in refused.stderr
    unused = synth("prompt", "--engine", "echo", "--max-model-len", "512", "hello")
    assert unused.returncode == 1 and "the echo engine has no option --max-model-len" in unused.stderr
    # An endpoint key in the environment is for the endpoint engine; another engine is not refused for it.
    assert synth("prompt", "--engine", "echo", "hi", env={"SMALLSET_ENDPOINT_KEY": "k"}).returncode == 0
    for proc in (refused, unused):
        assert "Traceback" not in proc.stderr


def test_synth_generate_records_the_engine_in_its_manifest(tmp_path):
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"name": "echoes", "instructions": "Say a colour.", "n": 2,
                                    "output": {"fields": {"colour": {"type": "string", "maxLength": 20}},
                                               "user": "Say {colour}.", "assistant": "{colour}"}}))
    out = tmp_path / "out.jsonl"
    proc = synth("generate", str(task), "-o", str(out), "--engine", "echo", "--no-structured",
                 "--engine-option", "prefix=")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["parameters"]["engine"] == {"name": "echo", "options": {"prefix": ""}}
    assert manifest["models"][0]["source"] == "plugin:echo"
    assert manifest["counts"]["unparsable"] == 2  # an echo of the prompt is no JSON sample


# -- the in-process vLLM engine ----------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import json, sys

    from curate.engines import CAPABILITIES, Engine, UnsupportedError, open_engine
    from curate.llm import SamplingConfig

    if __name__ == "__main__":
        question, colours, schema = json.loads(sys.argv[1])
        greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=24, seed=0)
        with open_engine("vllm", max_model_len=1024) as engine:
            out = {"protocol": isinstance(engine, Engine), "flags": {c: getattr(engine, c) for c in CAPABILITIES},
                   "class_flags": {c: getattr(type(engine), c) for c in CAPABILITIES}}
            out["json"] = [g.text for g in engine.chat([question] * 2, greedy, json_schema=schema)]
            out["choices"] = [g.text for g in engine.chat([question, [question[1]]], greedy, choices=colours)]
            [scored] = engine.chat([question], greedy, logprobs=True)
            out["logprobs"] = {"values": scored.logprobs, "completion_tokens": scored.completion_tokens}
            out["prompt_token_ids"] = scored.prompt_token_ids
            before = dict(engine.usage)
            try:
                engine.chat([question], greedy, lora=("tiny", 1, "/nowhere"))
            except UnsupportedError as exc:
                out["lora_error"] = str(exc)
            out["usage_unchanged"] = engine.usage == before
        print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory) -> dict:
    """What one in-process engine did, asked for each capability (one engine start)."""
    script = tmp_path_factory.mktemp("inprocess") / "engine.py"
    script.write_text(SCRIPT)
    return script_json(script, [QUESTION, COLOURS, SCHEMA])


def script_json(script: Path, argument: object, timeout: float = 900) -> dict:
    """Run a Python script with one JSON argument in its own process group; its last stdout line, parsed."""
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(argument)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_vllm_engine_flags_match_what_it_does(inprocess):
    assert inprocess["protocol"]
    assert inprocess["class_flags"] == dict.fromkeys(CAPABILITIES, True)
    # Started without enable_lora: that one flag is off for this instance, the rest are on.
    assert inprocess["flags"] == {**dict.fromkeys(CAPABILITIES, True), "lora": False}
    assert all(isinstance(json.loads(text)["colour"], str) for text in inprocess["json"])  # structured_output
    assert set(inprocess["choices"]) <= set(COLOURS) and len(inprocess["choices"]) == 2  # choices
    scores = inprocess["logprobs"]  # logprobs: one per generated token, each a log-probability
    assert len(scores["values"]) == scores["completion_tokens"] > 0 and all(v <= 0 for v in scores["values"])
    assert inprocess["prompt_token_ids"]  # token_ids


@pytest.mark.slow
def test_vllm_engine_without_lora_refuses_an_adapter_by_name(inprocess):
    assert inprocess["lora_error"] == ("the vllm engine cannot apply a LoRA adapter: it was started without "
                                       "enable_lora (EngineConfig(enable_lora=True))")
    assert inprocess["usage_unchanged"]


# -- the endpoint engine against vLLM's OpenAI server ------------------------------------------

ADAPTER_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from curate.models import resolve_llm

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(resolve_llm().path), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(sys.argv[1])
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter of the default model with random weights: its greedy answers are not the base model's."""
    root = tmp_path_factory.mktemp("adapter")
    (root / "make.py").write_text(ADAPTER_SCRIPT)
    proc = subprocess.run([sys.executable, str(root / "make.py"), str(root / "tiny")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "tiny"


KEY = "engines-test-key"


@contextlib.contextmanager
def serving(logs: Path, *vllm_args: str):
    """`synth serve` with the test key on a free port while the block runs; yields (its base URL, its process)."""
    port = free_port()
    log = logs / f"serve-{port}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([SYNTH, "serve", "--port", str(port), "--max-model-len", "1024", "--api-key", KEY,
                                 *(["--", *vllm_args] if vllm_args else [])],
                                stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 480
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "synth serve did not answer within 480 s"
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(adapter, tmp_path_factory):
    """`synth serve` (vLLM's OpenAI server) with the adapter served as 'tiny'; yields its base URL."""
    with serving(tmp_path_factory.mktemp("serve"), "--enable-lora", "--max-lora-rank", "8",
                 "--lora-modules", f"tiny={adapter}") as (url, _):
        yield url


@pytest.fixture(scope="module")
def endpoint(server):
    with open_engine("endpoint", url=server, api_key=KEY, retries=1) as engine:
        yield engine


@pytest.mark.slow
def test_endpoint_flags_match_what_the_server_does(endpoint, adapter):
    assert isinstance(endpoint, Engine)
    # A vLLM server serving an adapter: every capability, none limited.
    assert {c: getattr(endpoint, c) for c in CAPABILITIES} == dict.fromkeys(CAPABILITIES, True) and endpoint.limits == {}
    assert endpoint.model_name == "teacher" and endpoint.adapters == {"tiny": str(adapter)}
    assert all(isinstance(json.loads(g.text)["colour"], str)
               for g in endpoint.chat([QUESTION] * 2, GREEDY, json_schema=SCHEMA))
    answers = [g.text for g in endpoint.chat([QUESTION, [QUESTION[1]]], GREEDY, choices=COLOURS)]
    assert set(answers) <= set(COLOURS) and len(answers) == 2
    [scored] = endpoint.chat([QUESTION], GREEDY, logprobs=True)
    assert len(scored.logprobs) == scored.completion_tokens > 0 and all(v <= 0 for v in scored.logprobs)


@pytest.mark.slow
def test_endpoint_renders_prompts_as_the_inprocess_engine_does(endpoint, inprocess):
    [reply] = endpoint.chat([QUESTION], GREEDY)
    assert reply.prompt_token_ids == inprocess["prompt_token_ids"]
    assert reply.prompt_tokens == len(reply.prompt_token_ids)


@pytest.mark.slow
def test_endpoint_applies_a_served_adapter_by_name_or_folder(endpoint, adapter):
    [base] = endpoint.chat([QUESTION], GREEDY)
    [by_name] = endpoint.chat([QUESTION], GREEDY, lora=("tiny", 1, "/not/the/folder"))
    [by_folder] = endpoint.chat([QUESTION], GREEDY, lora=("adapter", 1, str(adapter)))
    assert by_name.text != base.text  # the adapter answered, not the base model
    assert by_folder.text == by_name.text
    requests = endpoint.usage["requests"]
    with pytest.raises(UnsupportedError) as err:
        endpoint.chat([QUESTION], GREEDY, lora=("other", 2, "/elsewhere"))
    assert str(err.value).startswith("the endpoint engine cannot apply the LoRA adapter 'other' (/elsewhere)")
    assert "serves only tiny" in str(err.value) and "--lora-modules other=FOLDER" in str(err.value)
    assert endpoint.usage["requests"] == requests  # refused before a request was sent


# -- several endpoints: one engine over two `synth serve` servers -------------------------------------


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    """A second `synth serve` of the same model, without LoRA; the last test stops it mid-run."""
    with serving(tmp_path_factory.mktemp("second")) as (url, proc):
        yield url, proc


def served(url: str) -> int:
    """Chat requests the vLLM server at `url` finished, by its own Prometheus counter."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("vllm:request_success_total")))


SHORT = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=8, seed=0)


@pytest.mark.slow
def test_every_endpoint_must_serve_the_model_and_capabilities_are_what_all_can(server, second):
    url_b, _ = second
    with pytest.raises(SmallsetError) as err:
        open_engine("endpoint", url=[server, url_b], api_key=KEY, model="tiny", retries=0)
    assert str(err.value) == (f"the endpoint {url_b} does not serve the model 'tiny' (it serves teacher); "
                              "every endpoint must serve the same model")
    with open_engine("endpoint", url=f"{server},{url_b}", api_key=KEY, retries=0) as engine:  # a comma-separated list
        assert engine.model_name == "teacher" and engine.model.path == f"{server},{url_b}"
        # Both are vLLM: guided choice and token ids stay; only the first serves an adapter: LoRA is off, and says why.
        assert {c: getattr(engine, c) for c in CAPABILITIES} == {**dict.fromkeys(CAPABILITIES, True), "lora": False}
        assert engine.adapters == {} and engine.limits == {
            "lora": f"{url_b} serves no LoRA adapter (serve one with vLLM's --enable-lora --lora-modules NAME=FOLDER)"}
        with pytest.raises(UnsupportedError):
            engine.chat([QUESTION], GREEDY, lora=("tiny", 1, "/nowhere"))


@pytest.mark.slow
def test_synth_generate_over_two_endpoints_from_the_environment(server, second, tmp_path):
    url_b, _ = second
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"name": "colours", "instructions": "Name a colour.", "n": 6,
                                    "output": {"fields": {"colour": {"type": "string", "maxLength": 20}},
                                               "user": "Name {colour}.", "assistant": "{colour}"},
                                    "sampling": {"max_tokens": 24, "seed": 2}}))
    out = tmp_path / "out.jsonl"
    before = {url: served(url) for url in (server, url_b)}
    proc = synth("generate", str(task), "-o", str(out), "--batch-size", "6",
                 env={"SMALLSET_ENDPOINT": f"{server}, {url_b}", "SMALLSET_ENDPOINT_KEY": KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    parameters = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["parameters"]
    assert parameters["engine"]["options"]["url"] == [server, url_b] and parameters["executor"] == "local"
    answered = {url: served(url) - before[url] for url in (server, url_b)}
    assert {url: e["requests"] for url, e in parameters["endpoints"].items()} == answered
    assert sum(answered.values()) == 6 and min(answered.values()) > 0  # balanced: both servers answered


@pytest.mark.slow
def test_requests_are_balanced_and_survive_one_endpoint_stopping_mid_run(server, second):
    from transformers import AutoTokenizer

    from curate.models import resolve_llm

    url_b, proc_b = second
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_llm().path))
    with open_engine("endpoint", url=[server, url_b], api_key=KEY, retries=3, concurrency=2) as engine:
        before = {url: served(url) for url in (server, url_b)}
        first = engine.chat([[{"role": "user", "content": f"Say the number {i}."}] for i in range(12)], SHORT)
        answered = {url: served(url) - before[url] for url in (server, url_b)}
        # Counted by the servers themselves: both took work, nothing twice, and the engine knows who did what.
        assert sum(answered.values()) == 12 and min(answered.values()) >= 3, answered
        assert {url: e["requests"] for url, e in engine.per_endpoint.items()} == answered
        assert len(first) == 12

        done = threading.Event()

        def stop_b_once_it_answered_two_more():
            target = engine.per_endpoint[url_b]["requests"] + 2
            while not done.is_set() and engine.per_endpoint[url_b]["requests"] < target:
                time.sleep(0.05)
            os.killpg(proc_b.pid, signal.SIGKILL)  # the server and its engine, mid-run

        stopper = threading.Thread(target=stop_b_once_it_answered_two_more)
        stopper.start()
        conversations = [[{"role": "user", "content": f"Name the colour number {i}."}] for i in range(24)]
        try:
            replies = engine.chat(conversations, SHORT)
        finally:
            done.set()
            stopper.join()
        proc_b.wait(timeout=60)
        stats = engine.per_endpoint
    # Every conversation answered once, in order, although the second server went away with requests in flight.
    assert len(replies) == 24
    for i, reply in enumerate(replies):
        assert f"colour number {i}." in tokenizer.decode(reply.prompt_token_ids)
    assert stats[url_b]["failures"] >= 1  # it was stopped while it still had work: those requests moved
    assert stats[server]["requests"] + stats[url_b]["requests"] == 12 + 24  # none lost, none answered twice

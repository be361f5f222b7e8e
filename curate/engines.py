"""What an LLM engine is, what it can do, and where engines are found by name.

The teacher (`synth`), the judge (`curate score`) and the evaluator (`train eval`) talk to
any engine through one `chat` signature. Backends differ in what they can honour, so each
says so in capability flags; an engine asked for something it cannot do raises
`UnsupportedError` naming itself and the capability, instead of ignoring the argument
(an ignored LoRA adapter would score the base model under the adapter's name).

Engines are looked up by name: the built-ins ("vllm": the in-process vLLM engine,
"endpoint": OpenAI-compatible servers, "ray": vLLM replicas as Ray actors) and any package
that registers an entry point in the group `smallset.engines` (``name = "module:EngineClass"``).
The built-ins are also known without their entry points, so an uninstalled checkout works.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from curate import plugins
from curate.errors import SmallsetError

if TYPE_CHECKING:
    from curate.llm import Generation, SamplingConfig
    from curate.models import ResolvedModel

GROUP = plugins.GROUPS["engines"]
BUILTINS = {"vllm": "curate.llm:LLMEngine", "endpoint": "curate.llm:EndpointEngine", "ray": "curate.ray_engine:RayEngine"}
CAPABILITIES = {
    "structured_output": "constrain a reply to a JSON schema",
    "choices": "constrain a reply to one of a list of choices",
    "lora": "apply a LoRA adapter",
    "logprobs": "return the log-probability of each generated token",
    "token_ids": "return the prompt as it tokenized it",
}
"""Capability flag -> what it promises (the error message's wording)."""


class UnsupportedError(SmallsetError, ValueError):
    """An engine was asked for something it cannot do: the message names the engine and the capability."""


class EngineNotFoundError(SmallsetError, LookupError):
    """No engine is registered under a name, or two are."""


@runtime_checkable
class Engine(Protocol):
    """One LLM backend. Build it with `open_engine`; use it as a context manager.

    The capability flags are class attributes saying what the backend can do; an instance
    may turn one off for its own configuration (a vLLM engine started without LoRA, a server
    that serves no adapter) and then says why in `limits`.
    """

    name: ClassVar[str]
    """The registry name, used in messages."""
    Config: ClassVar[type]
    """The dataclass `open_engine` builds from its options; the engine is built as `Engine(Config(...))`."""
    structured_output: bool
    """`json_schema`: every reply is valid JSON of that schema."""
    choices: bool
    """`choices`: every reply is exactly one of these strings."""
    lora: bool
    """`lora` = (name, integer id, adapter folder): the reply comes from the base model with that adapter."""
    logprobs: bool
    """`logprobs=True`: `Generation.logprobs` holds each generated token's log-probability."""
    token_ids: bool
    """`Generation.prompt_token_ids` holds the prompt as the engine tokenized it (no argument asks for it)."""
    limits: dict[str, str]
    """Capability -> why this instance lacks it although its class has it."""
    model: ResolvedModel
    usage: dict[str, int]
    """prompt_tokens, completion_tokens, requests so far."""

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig | list[SamplingConfig] | None = None,
             json_schema: dict | list[dict | None] | None = None, lora: tuple[str, int, str] | None = None,
             progress: bool = False, choices: list[str] | None = None, logprobs: bool = False) -> list[Generation]:
        """One reply per conversation, in order; `sampling` and `json_schema` are one for all or one per conversation."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


def check_request(engine: Engine, *, json_schema: Any = None, choices: Any = None, lora: Any = None,
                  logprobs: bool = False) -> None:
    """Raise `UnsupportedError` for the first thing asked of `engine` that it cannot do."""
    schemas = json_schema if isinstance(json_schema, list) else [json_schema]
    asked = {"structured_output": any(s is not None for s in schemas), "choices": choices is not None,
             "lora": lora is not None, "logprobs": bool(logprobs)}
    for capability, wanted in asked.items():
        if wanted and not getattr(engine, capability, False):
            why = (getattr(engine, "limits", None) or {}).get(capability)
            raise UnsupportedError(f"the {engine.name} engine cannot {CAPABILITIES[capability]}" + (f": {why}" if why else ""))


def registered() -> dict[str, str]:
    """Engine name -> "module:attribute", the built-ins first, then every entry point in `smallset.engines`."""
    try:
        return plugins.registered("engines", BUILTINS)
    except plugins.PluginError as exc:
        raise EngineNotFoundError(str(exc)) from None


def engine_names() -> list[str]:
    return sorted(registered())


def engine_class(name: str) -> type:
    """The class registered as `name`, checked to have what `Engine` needs."""
    found = registered()
    if name not in found:
        raise EngineNotFoundError(f"no engine named {name!r}; registered engines: {', '.join(sorted(found))} "
                                  f"(a package adds one with an entry point in the group {GROUP!r})")
    try:
        cls = plugins.load("engines", name, BUILTINS)
    except plugins.PluginError as exc:
        raise EngineNotFoundError(str(exc)) from None
    missing = [a for a in ("name", "Config", "chat", "close", "__enter__", *CAPABILITIES) if not hasattr(cls, a)]
    if missing or not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise EngineNotFoundError(f"the engine {name!r} ({found[name]}) is not an Engine: it lacks "
                                  f"{', '.join(missing) or 'a dataclass Config'}")
    return cls


def open_engine(name: str, /, **options: Any) -> Engine:
    """Build the engine registered as `name` from `options`, the fields of its `Config`.

    An option given as None takes the engine's default, so a CLI can pass its flags as they
    are; an option the engine does not have is an error, not ignored.
    """
    cls, config = engine_config(name, options)
    return cls(config)


def engine_config(name: str, options: dict[str, Any], labels: dict[str, str] | None = None) -> tuple[type, Any]:
    """The engine class and its `Config` built from `options`; `labels` names options in messages (e.g. CLI flags)."""
    cls = engine_class(name)
    fields = dataclasses.fields(cls.Config)
    names = [f.name for f in fields]
    label = lambda key: (labels or {}).get(key, repr(key))  # noqa: E731
    given = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in given if k not in names]
    if unknown:
        raise UnsupportedError(f"the {name} engine has no option {', '.join(map(label, unknown))} (its options: {', '.join(names)})")
    required = [f.name for f in fields if f.name not in given and f.init
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise UnsupportedError(f"the {name} engine needs {', '.join(map(label, required))}")
    return cls, cls.Config(**given)

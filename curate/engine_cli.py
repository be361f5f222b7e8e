"""The command-line options that choose an engine, shared by every command that asks an LLM.

`--engine NAME` picks a registered engine (`curate.engines`); without it `--endpoint URL`
(repeatable, or a comma-separated SMALLSET_ENDPOINT: requests are balanced over the servers)
means the endpoint engine and nothing means the in-process vLLM engine. `--engine-option
KEY=VALUE` reaches any field of the engine's config (a plugin's too, or the endpoint's
timeout and concurrency). A flag the chosen engine has no use for is an error naming the
flag, not silently dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any

import click
from click.core import ParameterSource

from curate.console import console
from curate.engines import Engine, engine_class, engine_config
from curate.llm import endpoint_urls

FLAGS = {"url": "--endpoint URL (or SMALLSET_ENDPOINT)", "api_key": "--api-key", "model": "--model",
         "max_model_len": "--max-model-len", "replicas": "--replicas", "address": "--ray-address"}
"""Engine option -> the flag that sets it, for messages."""
SECRET = ("api_key",)


@dataclass
class EngineChoice:
    """Which engine a command opens, and the options it was given on the command line."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    ambient: tuple[str, ...] = ()
    """Options that came from the environment (SMALLSET_ENDPOINT_KEY...): passed only to an engine that has them."""
    raw: tuple[str, ...] = ()
    """Options given as text (--engine-option), converted to their field's type when the engine is known."""
    used: dict[str, Any] = field(default_factory=dict)
    """The options the engine was opened with (set by `open`)."""
    named: bool = False
    """The engine was named (--engine), not implied by --endpoint or its absence."""

    @classmethod
    def from_cli(cls, engine: str | None, endpoint: str | tuple[str, ...] | None, api_key: str | None,
                 engine_option: tuple[str, ...] = (), ambient: tuple[str, ...] = ()) -> EngineChoice:
        urls = endpoint_urls(endpoint)
        options: dict[str, Any] = {"url": (urls[0] if len(urls) == 1 else urls) or None, "api_key": api_key}
        raw: list[str] = []
        for item in engine_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--engine-option")
            options[key.strip().replace("-", "_")] = value
            raw.append(key.strip().replace("-", "_"))
        return cls(engine or ("endpoint" if urls else "vllm"), options, ambient, tuple(raw), named=engine is not None)

    def on_executor(self, executor: str, replicas: int | None = None, address: str | None = None) -> EngineChoice:
        """The choice under `--executor`: `ray` makes the implied in-process engine the ray engine (endpoints stay
        endpoints); --replicas and --ray-address go to the ray engine and are refused for any other."""
        if executor == "ray" and self.name == "vllm":
            if self.named:
                raise click.BadParameter("--engine vllm is one engine in this process; drop it to run replicas on Ray",
                                         param_hint="--executor ray")
            self.name = "ray"
        given = {key: value for key, value in (("replicas", replicas), ("address", address)) if value is not None}
        if given and self.name != "ray":
            flags = " and ".join(FLAGS[key] for key in given)
            raise click.BadParameter(f"{flags} {'are' if len(given) > 1 else 'is'} for the ray engine (--executor ray), "
                                     f"not the {self.name} engine", param_hint=FLAGS[next(iter(given))])
        self.options.update(given)
        return self

    def open(self, **command_options: Any) -> Engine:
        """The engine, built from the command's own engine flags (model, max_model_len) and the choice's options."""
        fields = {f.name: f for f in dataclasses.fields(engine_class(self.name).Config)}
        options = _typed({**command_options, **self.options}, self.raw, fields)
        self.used = {k: v for k, v in options.items() if v is not None and (k in fields or k not in self.ambient)}
        cls, config = engine_config(self.name, self.used, labels=FLAGS)
        starting = {"vllm": "starting the vLLM engine (about 30 s on CPU)",
                    "ray": f"starting {getattr(config, 'replicas', '')} vLLM replicas on Ray"}.get(self.name)
        if starting is None:
            return cls(config)
        with console.status(starting):
            return cls(config)

    def describe(self, engine: Engine | None = None) -> dict[str, Any]:
        """For the manifest: the engine's name and its whole config (defaults too) if given, else the options; secrets masked."""
        config = getattr(engine, "config", None)
        options = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else self.used
        return {"name": self.name, "options": {k: "***" if k in SECRET and v is not None else v for k, v in options.items()}}


def _typed(options: dict[str, Any], raw: tuple[str, ...], fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """`options` with the --engine-option values in `raw` converted to their config field's type."""
    out = dict(options)
    for key in raw:
        text, f = out[key], fields.get(key)
        if f is None or not isinstance(text, str):
            continue
        if not text.strip():
            out[key] = None  # the engine's default
            continue
        kind = type(f.default) if f.default not in (dataclasses.MISSING, None) else None
        if kind is None:
            annotation = f.type if isinstance(f.type, str) else str(f.type)
            kind = next((t for t in (bool, int, float) if re.search(rf"\b{t.__name__}\b", annotation)), str)
        try:
            if kind is bool:
                out[key] = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.strip().lower()]
            elif kind in (int, float):
                out[key] = kind(text)
        except (KeyError, ValueError):
            raise click.BadParameter(f"{key}: expected {kind.__name__}, got {text!r}", param_hint="--engine-option") from None
    return out


def engine_options(command):
    """Add --engine, --endpoint, --api-key and --engine-option; the command gets them as `engine_choice`."""

    @functools.wraps(command)
    def wrapper(*args: Any, engine: str | None, endpoint: tuple[str, ...], api_key: str | None,
                engine_option: tuple[str, ...], **kwargs: Any):
        ctx = click.get_current_context()
        ambient = tuple(key for key, param in (("url", "endpoint"), ("api_key", "api_key"))
                        if ctx.get_parameter_source(param) == ParameterSource.ENVIRONMENT)
        choice = EngineChoice.from_cli(engine, endpoint, api_key, engine_option, ambient)
        return command(*args, engine_choice=choice, **kwargs)

    options = [
        click.option("--engine", metavar="NAME",
                     help="Engine: vllm (in-process), endpoint (OpenAI-compatible servers), ray (vLLM replicas as Ray "
                          "actors), or one a plugin registers "
                          "in the entry-point group smallset.engines. [default: endpoint with --endpoint, else vllm]"),
        click.option("--endpoint", envvar="SMALLSET_ENDPOINT", metavar="URL", multiple=True,
                     help="Use an OpenAI-compatible server (e.g. `synth serve`) instead of an in-process engine; "
                          "repeat it (or list them comma-separated in SMALLSET_ENDPOINT) to balance requests over "
                          "several serving the same model (concurrency is per server)."),
        click.option("--api-key", envvar="SMALLSET_ENDPOINT_KEY", help="API key for --endpoint."),
        click.option("--engine-option", multiple=True, metavar="KEY=VALUE",
                     help="Any field of the engine's config, e.g. timeout_s=300, concurrency=4 or (ray) replicas=2 "
                          "(repeatable)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper

"""The command-line options that choose an engine, shared by every command that asks an LLM.

`--engine NAME` picks a registered engine (`curate.engines`); without it `--endpoint URL`
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

FLAGS = {"url": "--endpoint URL (or SMALLSET_ENDPOINT)", "api_key": "--api-key", "model": "--model", "max_model_len": "--max-model-len"}
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

    @classmethod
    def from_cli(cls, engine: str | None, endpoint: str | None, api_key: str | None,
                 engine_option: tuple[str, ...] = (), ambient: tuple[str, ...] = ()) -> EngineChoice:
        options: dict[str, Any] = {"url": endpoint, "api_key": api_key}
        raw: list[str] = []
        for item in engine_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--engine-option")
            options[key.strip().replace("-", "_")] = value
            raw.append(key.strip().replace("-", "_"))
        return cls(engine or ("endpoint" if endpoint else "vllm"), options, ambient, tuple(raw))

    def open(self, **command_options: Any) -> Engine:
        """The engine, built from the command's own engine flags (model, max_model_len) and the choice's options."""
        fields = {f.name: f for f in dataclasses.fields(engine_class(self.name).Config)}
        options = _typed({**command_options, **self.options}, self.raw, fields)
        self.used = {k: v for k, v in options.items() if v is not None and (k in fields or k not in self.ambient)}
        cls, config = engine_config(self.name, self.used, labels=FLAGS)
        if self.name != "vllm":
            return cls(config)
        with console.status("starting the vLLM engine (about 30 s on CPU)"):
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
    def wrapper(*args: Any, engine: str | None, endpoint: str | None, api_key: str | None,
                engine_option: tuple[str, ...], **kwargs: Any):
        ctx = click.get_current_context()
        ambient = tuple(key for key, param in (("url", "endpoint"), ("api_key", "api_key"))
                        if ctx.get_parameter_source(param) == ParameterSource.ENVIRONMENT)
        choice = EngineChoice.from_cli(engine, endpoint, api_key, engine_option, ambient)
        return command(*args, engine_choice=choice, **kwargs)

    options = [
        click.option("--engine", metavar="NAME",
                     help="Engine: vllm (in-process), endpoint (an OpenAI-compatible server), or one a plugin registers "
                          "in the entry-point group smallset.engines. [default: endpoint with --endpoint, else vllm]"),
        click.option("--endpoint", envvar="SMALLSET_ENDPOINT", metavar="URL",
                     help="Use an OpenAI-compatible server (e.g. `synth serve`) instead of an in-process engine."),
        click.option("--api-key", envvar="SMALLSET_ENDPOINT_KEY", help="API key for --endpoint."),
        click.option("--engine-option", multiple=True, metavar="KEY=VALUE",
                     help="Any field of the engine's config, e.g. timeout_s=300 or concurrency=4 (repeatable)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper

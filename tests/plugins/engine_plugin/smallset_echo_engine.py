"""A third-party engine, as a plugin package would ship one: it answers with the user's last message.

It exists to show that `curate.engines` finds engines through the `smallset.engines`
entry-point group: the dist-info folder beside this file registers it as "echo", so
putting this folder on the path (sys.path or PYTHONPATH) installs it, as pip would.
It honours none of the capabilities, so asking it for one must fail by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.engines import check_request
from curate.llm import Generation, count_usage
from curate.models import ResolvedModel


@dataclass
class EchoConfig:
    prefix: str = ""
    """Put before every reply."""


class EchoEngine:
    name = "echo"
    Config = EchoConfig
    structured_output = choices = lora = logprobs = token_ids = False
    limits: dict[str, str] = {}

    def __init__(self, config: EchoConfig) -> None:
        self.config = config
        self.model = ResolvedModel("llm", Path(__file__), "plugin:echo")
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

    def chat(self, conversations, sampling=None, json_schema=None, lora=None, progress=False, choices=None, logprobs=False):
        check_request(self, json_schema=json_schema, choices=choices, lora=lora, logprobs=logprobs)
        replies = []
        for messages in conversations:
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            text = self.config.prefix + last
            replies.append(Generation(text, sum(len(m["content"].split()) for m in messages), len(text.split()), "stop"))
        return count_usage(self.usage, replies)

    def close(self) -> None:
        pass

    def __enter__(self) -> EchoEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Chat-template tokenization with the loss on assistant tokens only.

The model must see in training exactly what it sees when served: the base model's own
chat template (`tokenizer.apply_chat_template`), with the generation prompt before each
reply. So each conversation is rendered incrementally: for every assistant turn, the
prompt is the conversation so far rendered with `add_generation_prompt=True`, and the
target is what rendering the turn itself adds: its content and end-of-turn token. The
prompt and the target are tokenized separately, as a server tokenizes a prompt and then
generates, and prompt tokens get the label -100 (no loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.errors import InputError
from train.errors import TrainError

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass
class Encoded:
    """One conversation as token ids, with labels that are -100 outside the assistant replies."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_target) pieces; turns after the last reply are dropped.

    The newline a template writes after the end-of-turn token is left to the next prompt: a
    model stops generating at end-of-turn and never produces it.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        raise ValueError("no assistant turn")
    if replies[0] == 0:
        raise ValueError("the conversation starts with an assistant turn: nothing prompts it")
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i in replies:
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise TrainError(
                "the model's chat template renders earlier turns differently once later turns are added "
                "(e.g. it drops reasoning from past replies), so prompt masking cannot be derived from it; "
                "train on single-reply conversations or use a model with an incremental template"
            )
        target = full[len(prompt):].rstrip()
        pieces += [(prompt[len(done):], False), (target, True)]
        done = prompt + target
    return pieces


def encode(tokenizer, messages: Sequence[dict], max_length: int | None = None) -> Encoded:
    """Token ids and labels for one conversation, cut to `max_length` tokens."""
    pieces = segments(tokenizer, messages)
    ids_per_piece = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for (_, is_target), ids in zip(pieces, ids_per_piece):
        input_ids += ids
        labels += ids if is_target else [IGNORE] * len(ids)
    encoded = Encoded(input_ids, labels, len(input_ids))
    return truncate(encoded, max_length) if max_length is not None else encoded


def encode_all(tokenizer, conversations: Sequence[Sequence[dict]], path: str | Path | None = None) -> list[Encoded]:
    """Encode every row (untruncated); a row that cannot be trained on is an `InputError` naming it."""
    out = []
    for row, messages in enumerate(conversations, start=1):
        try:
            out.append(encode(tokenizer, messages or []))
        except ValueError as exc:
            raise InputError(path, str(exc), line=row, field="messages", unit="record") from None
    return out


def auto_max_length(lengths: Sequence[int], cap: int) -> int:
    """The 99th percentile of token lengths, rounded up to a multiple of 8, at most `cap`."""
    p99 = int(np.percentile(np.asarray(lengths), 99, method="higher"))
    return min(cap, -(-p99 // 8) * 8)


def truncate(encoded: Encoded, max_length: int) -> Encoded:
    """The first `max_length` tokens; or the last ones, when the first hold no reply token at all.

    Keeping the start keeps the instruction and the first replies of a long conversation.
    But a long prompt before a short reply (a long ticket and its one-token label) would
    lose the reply, so the row would teach nothing; keeping the end instead (TRL's
    `keep_end`) keeps the reply whole and the end of its prompt. When even the end is
    all reply, with no prompt token left to condition on, the start is kept (and the row
    has no target: the trainer leaves it out and counts it).
    """
    head = Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length], encoded.full_length)
    if len(encoded.input_ids) <= max_length or head.n_targets > 0:
        return head
    tail = Encoded(encoded.input_ids[-max_length:], encoded.labels[-max_length:], encoded.full_length)
    if 0 < tail.n_targets < max_length:
        return tail
    return head

"""Token rules: conversations too short to teach anything or too long for the student's context."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import polars as pl

from curate.rules import Batch, Outcome, Rule, int_at_least
from curate.step import option

TOKENS_COLUMN = "filter_tokens"


class Tokens(Rule):
    """Fewer than min_tokens or more than max_tokens tokens of the student model's tokenizer (all turns)."""

    reasons = {
        "too_short": "fewer tokens than the minimum (the student model's tokenizer, all turns)",
        "too_long": "more tokens than the maximum (the student model's tokenizer, all turns)",
    }
    order = 100
    survivors_only = True
    measures = {TOKENS_COLUMN: pl.Int64}

    @dataclass
    class Options:
        min_tokens: int | None = option(2, "Fewest tokens (all turns, the student model's tokenizer); 0 turns it off.",
                                        off=0)
        """Drop conversations with fewer tokens (all turn contents, the chat template not counted).
        Default 2, after datatrove's/C4's "at least a few words" floor: catches empty and one-token rows."""
        max_tokens: int | None = option(2048, "Most tokens; 0 turns it off. The chat template adds a few per turn.",
                                        off=0)
        """Drop conversations with more tokens. Default 2048, the context length the small student models
        train with; the chat template adds a few tokens per turn on top, so leave headroom below your
        training max length."""
        tokenizer: str | None = option(None, "Model whose tokenizer counts tokens (default: the student LLM, env "
                                       "SMALLSET_LLM).", flag="--model", renamed_from=("--tokenizer",))
        """Model spec whose tokenizer counts tokens (`resolve_llm`): None/'default' = the student model
        (SmolLM2-135M-Instruct), a local folder, or a cached hub id. On the command line `--model`, as in
        `train lora` (the old `--tokenizer` works for one more release)."""

    def enabled(self) -> bool:
        return self.config.min_tokens is not None or self.config.max_tokens is not None

    def validate(self) -> None:
        c = self.config
        int_at_least("min_tokens", c.min_tokens, 0)
        int_at_least("max_tokens", c.max_tokens, 1)
        if c.min_tokens is not None and c.max_tokens is not None and c.min_tokens > c.max_tokens:
            raise ValueError(f"min_tokens ({c.min_tokens}) is above max_tokens ({c.max_tokens})")

    def codes(self) -> list[str]:
        return [code for code, limit in (("too_short", self.config.min_tokens), ("too_long", self.config.max_tokens))
                if limit is not None]

    def check(self, batch: Batch) -> Outcome:
        c = self.config
        tokens = count_tokens(batch.df, c.tokenizer) if batch.n else pl.Series(TOKENS_COLUMN, [], dtype=pl.Int64)
        out = Outcome(measures={TOKENS_COLUMN: tokens})
        if c.min_tokens is not None:
            out.failures.append(("too_short", tokens < c.min_tokens,
                                 pl.select(pl.format("{} tokens < min {}", tokens, pl.lit(c.min_tokens))).to_series()))
        if c.max_tokens is not None:
            out.failures.append(("too_long", tokens > c.max_tokens,
                                 pl.select(pl.format("{} tokens > max {}", tokens, pl.lit(c.max_tokens))).to_series()))
        return out


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def count_tokens(df: pl.DataFrame, spec: str | None = None) -> pl.Series:
    """Tokens per record: the sum over all turns of the content's tokens (no special tokens, no
    chat template), with the tokenizer of `spec` (`resolve_llm`: None = the student model)."""
    from curate.models import resolve_llm

    tokenizer = _tokenizer(str(resolve_llm(spec).path))
    turns = df.select("messages").with_row_index("row").explode("messages").unnest("messages")
    turns = turns.with_columns(pl.col("content").fill_null(""))
    distinct = turns.select("content").unique()  # a shared system prompt is encoded once
    texts = distinct["content"].to_list()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer: batch-encode without offsets where it can
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        lengths = [len(e) for e in encode(texts, add_special_tokens=False)]
    else:  # a slow (Python) tokenizer
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    sizes = distinct.with_columns(tokens=pl.Series(lengths, dtype=pl.Int64))
    per_row = turns.join(sizes, on="content", how="left").group_by("row").agg(pl.col("tokens").sum())
    counts = (
        df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"))
        .join(per_row, on="row", how="left", maintain_order="left")
        .select(pl.col("tokens").fill_null(0))
    )
    return counts.to_series().alias(TOKENS_COLUMN)

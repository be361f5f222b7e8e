"""A smallset plugin: the `curate shouting` step, the `prompt_words` filter rule and the `interview` synth strategy."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from curate.drops import make_drops
from curate.rules import Batch, Outcome, Rule
from curate.step import Step, StepResult, option
from curate.text import field_text
from synth.strategies import Strategy


@dataclass
class ShoutingConfig:
    max_upper_share: float = option(0.6, "Most share of letters in the prompt that are upper case.")
    min_letters: int = option(8, "Prompts with fewer letters are never called shouted.")


class Shouting(Step):
    """Drop rows whose prompt is shouted (mostly upper-case letters).

    \b
    Example:
      curate shouting tickets.parquet --max-upper-share 0.5 -o calm.parquet
    """

    name = "shouting"
    Config = ShoutingConfig

    def run(self, records: pl.DataFrame) -> StepResult:
        text = records.select(field_text(("user",))).to_series()
        letters = text.str.count_matches(r"\p{L}")
        upper = text.str.count_matches(r"\p{Lu}")
        share = (upper / letters.clip(lower_bound=1)).fill_null(0.0)
        shouted = (letters >= self.config.min_letters) & (share > self.config.max_upper_share)
        drops = make_drops(id=records["id"].filter(shouted), step="shouting", reason="shouted",
                           detail=[f"{s:.0%} upper case > max {self.config.max_upper_share:.0%}" for s in share.filter(shouted)])
        return StepResult(records.filter(~shouted), drops, counts={"shouted": int(shouted.sum())})


class PromptWords(Rule):
    """Too few words in the user prompt to say what is asked."""

    reasons = {"few_prompt_words": "the user prompt has fewer words than the minimum"}
    order = 95

    @dataclass
    class Options:
        min_prompt_words: int | None = option(None, "Fewest words in the user prompt; 0 turns it off.", off=0, type=int)

    def enabled(self) -> bool:
        return self.config.min_prompt_words is not None

    def check(self, batch: Batch) -> Outcome:
        words = batch.df.select(field_text(("user",)).str.count_matches(r"\w+")).to_series()
        failed = words < self.config.min_prompt_words
        detail = pl.select(pl.format("{} words < min {}", words, pl.lit(self.config.min_prompt_words))).to_series()
        return Outcome([("few_prompt_words", failed, detail)])


class Interview(Strategy):
    """Ask for the sample as a customer would describe it on the phone."""

    name = "interview"

    def request(self, task, index, axes) -> str:
        wanted = ", ".join(f"{k} {v}" for k, v in axes.items())
        return f"Write sample {index + 1} as a caller would say it on the phone ({wanted})."

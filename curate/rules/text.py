"""Text rules: leftover template placeholders, cut-off answers, symbol soup and repetition."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from curate.rules import WHERE, Batch, Outcome, Rule, int_at_least, share
from curate.step import option
from curate.text import field_text

_DANGLING = ("a", "an", "the", "and", "or", "but", "nor", "because", "although", "whereas")
_BRACKETS = (("(", ")"), ("[", "]"), ("{", "}"))
_CODE_BLOCK = r"(?s)```.*?(?:```|\z)"
_INLINE_CODE = r"`[^`\n]*`"
# Each pattern's first group is the placeholder itself (the {var} pattern also eats the character before).
_PLACEHOLDERS = (
    r"(\{\{[^{}\n]{1,80}\}\})",  # {{var}} (Jinja, Mustache)
    r"(\$\{[A-Za-z_][A-Za-z0-9_.]*\})",  # ${var} (shell, JS templates)
    r"(?:^|[^\w\\^_$}{])(\{[A-Za-z_][A-Za-z0-9_]*\})",  # {var_name}, not LaTeX \text{..}, x^{..}, }{..}
    r"(<[A-Z][A-Z0-9_ ]*[A-Z0-9]>)",  # <PLACEHOLDER>, <YOUR NAME>
    r"(?i)(\[(?:insert|your|placeholder|enter|todo|tbd|name|date|company|recipient|address|email|phone)\b[^\]\n]{0,60}\])(?:[^(]|\z)",
)


class Placeholders(Rule):
    """A template variable nobody filled in ({{var}}, [Your Name]): generated or templated rows gone wrong."""

    reasons = {"placeholder": "a leftover template placeholder ({{var}}, {var}, ${var}, <NAME>, [Your Name], [INSERT ...])"}
    order = 50

    @dataclass
    class Options:
        check_placeholders: bool = option(True, "Drop rows with leftover template placeholders ({{var}}, [Your Name], "
                                          "<NAME>...).", flag="--placeholders/--no-placeholders")
        """Drop rows with leftover template placeholders in any turn ({{var}}, {var_name}, ${var},
        <PLACEHOLDER>, [INSERT ...], [Your Name], [Date]...). Code in ``` fences or `backticks` is ignored."""

    def enabled(self) -> bool:
        return self.config.check_placeholders

    def check(self, batch: Batch) -> Outcome:
        prose = pl.col("content").fill_null("").str.replace_all(_CODE_BLOCK, " ").str.replace_all(_INLINE_CODE, " ")
        found = pl.coalesce([prose.str.extract(p, 1) for p in _PLACEHOLDERS])
        candidates = batch.turns.filter(pl.col("content").str.contains(r"[{<\[]"))  # most turns have no bracket
        hits = candidates.with_columns(found=found).filter(pl.col("found").is_not_null())
        failed, detail = batch.first_per_row(hits, pl.lit(True),
                                             pl.format("placeholder \"{}\" in {} turn", pl.col("found"), pl.col("role")))
        return Outcome([("placeholder", failed, detail)])


class Truncated(Rule):
    """An answer that stops mid-way: an open code fence or bracket, a trailing comma, a dangling "the"."""

    reasons = {"truncated_response": "an assistant turn looks cut off: unclosed ``` fence or bracket, or ends on , ; : "
                                     "or a dangling and/or/the"}
    order = 60

    @dataclass
    class Options:
        check_truncated: bool = option(True, "Drop answers that look cut off (open fence or bracket, trailing , ; : "
                                       "and the).", flag="--truncated/--no-truncated")
        """Drop rows whose assistant turns look cut off (unclosed ``` fence, more opening than closing
        brackets, ending on , ; : or a dangling lower-case and/or/but/nor/because/a/an/the)."""

    def enabled(self) -> bool:
        return self.config.check_truncated

    def check(self, batch: Batch) -> Outcome:
        text = pl.col("content").fill_null("").str.strip_chars_end()
        fences = text.str.count_matches("```", literal=True)
        reasons = [pl.when(fences % 2 == 1).then(pl.lit("unclosed ``` code fence"))]
        for opening, closing in _BRACKETS:
            opened = text.str.count_matches(opening, literal=True)
            closed = text.str.count_matches(closing, literal=True)
            reasons.append(pl.when(opened > closed).then(
                pl.format("unclosed '{}' ({} opened, {} closed)", pl.lit(opening), opened, closed)))
        last = text.str.slice(-1)
        reasons.append(pl.when(last.is_in([",", ";", ":"])).then(pl.format("ends with '{}'", last)))
        dangling = text.str.extract(r"(?:^|[^\w'’-])(" + "|".join(_DANGLING) + r")\z", 1)
        reasons.append(pl.when(dangling.is_not_null()).then(pl.format("ends on a dangling '{}'", dangling)))
        failed, detail = batch.first_per_row(batch.assistant.with_columns(why=pl.coalesce(reasons)),
                                             pl.col("why").is_not_null(), pl.format("{}{}", pl.col("why"), WHERE))
        return Outcome([("truncated_response", failed, detail)])


class Symbols(Rule):
    """Too many characters that are neither letters, digits nor spaces: markup debris, encoding junk."""

    reasons = {"non_alphanumeric": "too large a share of characters are neither letters, digits nor whitespace"}
    order = 70

    @dataclass
    class Options:
        max_non_alnum_ratio: float | None = option(0.5, "Most share of characters that are not letters, digits or "
                                                   "spaces; 1 turns it off.", off=1.0)
        """Drop when more than this share of the characters of user and assistant turns are neither
        letters, digits nor whitespace. Default 0.5: looser than Gopher's symbol-to-word ratio (0.1),
        which would drop code and math."""

    def enabled(self) -> bool:
        return self.config.max_non_alnum_ratio is not None

    def validate(self) -> None:
        share("max_non_alnum_ratio", self.config.max_non_alnum_ratio)

    def check(self, batch: Batch) -> Outcome:
        text = field_text(("user", "assistant"))
        chars = text.str.len_chars()
        ratio = batch.df.select(
            pl.when(chars > 0).then(text.str.count_matches(r"[^\p{L}\p{N}\s]") / chars).otherwise(0.0)
        ).to_series()
        limit = self.config.max_non_alnum_ratio
        return Outcome([("non_alphanumeric", ratio > limit, pl.select(
            pl.format("{} of characters are symbols > max {}", ratio.round(2), pl.lit(limit))).to_series())])


class Repetition(Rule):
    """An answer that loops: many of its word n-grams repeat earlier ones (Gopher's duplicate n-gram fractions)."""

    reasons = {"repetitive": "too large a share of the assistant's word n-grams are repeats"}
    order = 80

    @dataclass
    class Options:
        max_repeated_ngram_ratio: float | None = option(0.3, "Most share of repeated word n-grams in the assistant "
                                                        "text; 1 turns it off.", off=1.0)
        """Drop when more than this share of the assistant text's word n-grams are repeats
        (occurrences beyond the first). Default 0.3: after Gopher's duplicate n-gram fractions
        (MassiveText drops 0.15-0.20 of characters in repeated 3- to 5-grams), loosened for short chat answers."""
        repeated_ngram: int = option(3, "n of those word n-grams.")
        """n for `max_repeated_ngram_ratio` (word n-grams, lower-cased). Default 3, Gopher's shortest."""

    def enabled(self) -> bool:
        return self.config.max_repeated_ngram_ratio is not None

    def validate(self) -> None:
        int_at_least("repeated_ngram", self.config.repeated_ngram, 1)
        share("max_repeated_ngram_ratio", self.config.max_repeated_ngram_ratio)

    def check(self, batch: Batch) -> Outcome:
        k = self.config.repeated_ngram
        ratio = repeated_ngram_ratio(batch.df.select(field_text(("assistant",))).to_series(), k)
        limit = self.config.max_repeated_ngram_ratio
        return Outcome([("repetitive", ratio > limit, pl.select(
            pl.format("{} of word {}-grams are repeats > max {}", ratio.round(2), pl.lit(k), pl.lit(limit))).to_series())])


def repeated_ngram_ratio(texts: pl.Series, n: int = 3) -> pl.Series:
    """Per text, the share of its lower-cased word n-grams that repeat an earlier one (0 when it has none)."""
    words = pl.DataFrame({"w": texts.fill_null("").str.to_lowercase().str.extract_all(r"\w+")}).with_row_index("row")
    flat = words.explode("w").drop_nulls("w")
    h = pl.col("w").hash()
    gram = pl.struct([h.shift(-k).alias(f"h{k}") for k in range(n)]).hash() if n > 1 else h
    grams = flat.select("row", gram.alias("g"), (pl.col("row").shift(-(n - 1)) == pl.col("row")).alias("ok")).filter("ok")
    per_row = grams.group_by("row").agg(total=pl.len(), distinct=pl.col("g").n_unique())
    ratio = (
        words.select("row")
        .join(per_row, on="row", how="left", maintain_order="left")
        .select(((pl.col("total") - pl.col("distinct")) / pl.col("total")).fill_null(0.0).alias("ratio"))
    )
    return ratio.to_series()

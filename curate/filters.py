"""Filters: heuristic quality rules, each with a reason code and a threshold.

Every rule looks at a record and says keep or drop; a dropped row goes to the drops
table with its reason code and the measured value against the threshold
("312 tokens > max 256"), so nothing disappears unexplained. A row failing several
rules is dropped once, for the first failing rule in this fixed order (cheap
structural checks first, the model-based measures last, and those only on the
rows still standing):

 1. ``role_order``          system only first, then user/assistant alternating from user, ending with assistant
 2. ``empty_response``      an assistant turn is empty or whitespace
 3. ``label_not_allowed``   the label is outside ``allowed_labels`` (or missing when labels are required)
 4. ``low_score:<column>``  a score column below its minimum (or missing), in ``min_scores`` order
 5. ``placeholder``         a leftover template placeholder: ``{{var}}``, ``{var}``, ``${var}``, ``<NAME>``, ``[Your Name]``
 6. ``truncated_response``  an unclosed code fence or bracket, or an answer ending on , ; : or "and"/"the"...
 7. ``non_alphanumeric``    too many symbol characters
 8. ``repetitive``          too many repeated word n-grams in the assistant text
 9. ``rule:<name>``         user rules (a polars SQL expression or a Python callable), in order
10. ``too_short``           fewer tokens than ``min_tokens`` (the student model's tokenizer)
11. ``too_long``            more tokens than ``max_tokens``
12. ``wrong_language``      language (py3langid) not in ``languages``, or identified with too little confidence

Kept rows gain the measures that were computed: ``filter_tokens`` (int) when a
token limit is set, ``filter_language`` (ISO 639-1 code) when ``languages`` is set.

The rules are vectorized with polars; 100k rows take seconds. Language
identification walks py3langid's byte automaton for all rows at once in numpy (the
same model and scores as ``py3langid.classify``, checked by the tests), and token
counting batch-encodes each distinct turn once with the tokenizer's Rust backend.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from curate.drops import empty_drops, make_drops
from curate.text import field_text

TOKENS_COLUMN = "filter_tokens"
LANGUAGE_COLUMN = "filter_language"

REASONS: dict[str, str] = {
    "role_order": "turns out of order: system only first, then user/assistant alternating from user, ending with assistant",
    "empty_response": "an assistant turn is empty or only whitespace",
    "label_not_allowed": "the label is not one of the allowed labels (or is missing while labels are required)",
    "low_score:<column>": "the score column is below its minimum, or missing for this row",
    "placeholder": "a leftover template placeholder ({{var}}, {var}, ${var}, <NAME>, [Your Name], [INSERT ...])",
    "truncated_response": "an assistant turn looks cut off: unclosed ``` fence or bracket, or ends on , ; : or a dangling and/or/the",
    "non_alphanumeric": "too large a share of characters are neither letters, digits nor whitespace",
    "repetitive": "too large a share of the assistant's word n-grams are repeats",
    "rule:<name>": "a user rule (expression or callable) did not hold",
    "too_short": "fewer tokens than the minimum (the student model's tokenizer, all turns)",
    "too_long": "more tokens than the maximum (the student model's tokenizer, all turns)",
    "wrong_language": "the identified language is not an allowed one, or was identified with too little confidence",
}
"""Reason code -> one-line description. Parameterized codes are listed as templates."""

ORDER = tuple(REASONS)
"""The order rules are checked in; a row is dropped for the first rule it fails."""


def describe_reason(code: str) -> str:
    """The description of a reason code, parameterized ones (`low_score:judge_score`) included."""
    if code in REASONS:
        return REASONS[code]
    prefix, _, _ = code.partition(":")
    for template, text in REASONS.items():
        if template.startswith(prefix + ":<"):
            return text
    raise KeyError(code)


@dataclass
class UserRule:
    """A rule of your own: rows for which it is not TRUE are dropped with reason `rule:<name>`.

    Exactly one of:

    * ``expr``: a polars SQL boolean expression over the record columns, e.g.
      ``"label <> 'spam' AND judge_score >= 3"`` (`polars.sql_expr`); NULL counts as not true;
    * ``callable``: ``"package.module:function"``, called with the whole DataFrame and
      returning a boolean Series (or list/array), True = keep, one value per row.
    """

    name: str
    expr: str | None = None
    callable: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[\w.\-]+", self.name):
            raise ValueError(f"rule name must be a non-empty word (letters, digits, _ . -), got {self.name!r}")
        if (self.expr is None) == (self.callable is None):
            raise ValueError(f"rule '{self.name}': give exactly one of expr or callable")
        if self.expr is not None:
            try:
                pl.sql_expr(self.expr)
            except Exception as exc:
                raise ValueError(f"rule '{self.name}': invalid expression {self.expr!r}: {exc}") from None
        if self.callable is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.callable):
            raise ValueError(f"rule '{self.name}': callable must look like 'package.module:function', got {self.callable!r}")

    @property
    def code(self) -> str:
        return f"rule:{self.name}"


@dataclass
class FilterConfig:
    """Which rules `curate filter` applies, and their thresholds. None turns a rule off."""

    min_tokens: int | None = 2
    """Drop conversations with fewer tokens (all turn contents, the chat template not counted).
    Default 2, after datatrove's/C4's "at least a few words" floor: catches empty and one-token rows."""
    max_tokens: int | None = 2048
    """Drop conversations with more tokens. Default 2048, the context length the small student models
    train with; the chat template adds a few tokens per turn on top, so leave headroom below your
    training max length."""
    tokenizer: str | None = None
    """Model spec whose tokenizer counts tokens (`resolve_llm`): None/'default' = the student model
    (SmolLM2-135M-Instruct), a local folder, or a cached hub id."""
    max_repeated_ngram_ratio: float | None = 0.3
    """Drop when more than this share of the assistant text's word n-grams are repeats
    (occurrences beyond the first). Default 0.3: after Gopher's duplicate n-gram fractions
    (MassiveText drops 0.15-0.20 of characters in repeated 3- to 5-grams), loosened for short chat answers."""
    repeated_ngram: int = 3
    """n for `max_repeated_ngram_ratio` (word n-grams, lower-cased). Default 3, Gopher's shortest."""
    max_non_alnum_ratio: float | None = 0.5
    """Drop when more than this share of the characters of user and assistant turns are neither
    letters, digits nor whitespace. Default 0.5: looser than Gopher's symbol-to-word ratio (0.1),
    which would drop code and math."""
    languages: tuple[str, ...] | None = None
    """Keep only these languages (ISO 639-1 codes, e.g. ("en", "fr")) of the user and assistant text,
    identified offline with py3langid (langid.py's model, 97 languages). None: no language check."""
    min_language_confidence: float = 0.5
    """Minimum probability of the identified language. Default 0.5 (FineWeb and datatrove use 0.65
    with fastText on long web documents; chat turns are shorter, so the score is lower)."""
    check_empty_response: bool = True
    """Drop rows with an empty or whitespace-only assistant turn."""
    check_truncated: bool = True
    """Drop rows whose assistant turns look cut off (unclosed ``` fence, more opening than closing
    brackets, ending on , ; : or a dangling lower-case and/or/but/nor/because/a/an/the)."""
    check_role_order: bool = True
    """Drop rows whose turns are not: an optional system turn first, then user and assistant
    alternating, starting with user and ending with assistant."""
    allowed_labels: tuple[str, ...] | None = None
    """Keep only rows labelled with one of these; a missing label is dropped too. None: any label."""
    check_placeholders: bool = True
    """Drop rows with leftover template placeholders in any turn ({{var}}, {var_name}, ${var},
    <PLACEHOLDER>, [INSERT ...], [Your Name], [Date]...). Code in ``` fences or `backticks` is ignored."""
    min_scores: dict[str, float] = field(default_factory=dict)
    """Numeric column -> minimum value kept, e.g. {"judge_score": 3}; rows below it or without a
    value are dropped. A column missing from the dataset is an error."""
    rules: list[UserRule] = field(default_factory=list)
    """User rules, checked after the built-in heuristics and before the token and language checks."""

    def __post_init__(self) -> None:
        if self.languages is not None:
            self.languages = (self.languages,) if isinstance(self.languages, str) else tuple(self.languages)
        if self.allowed_labels is not None:
            self.allowed_labels = (self.allowed_labels,) if isinstance(self.allowed_labels, str) else tuple(self.allowed_labels)
        self.min_scores = dict(self.min_scores)
        self.rules = [r if isinstance(r, UserRule) else UserRule(**r) for r in self.rules]
        _int_at_least("min_tokens", self.min_tokens, 0)
        _int_at_least("max_tokens", self.max_tokens, 1)
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        _int_at_least("repeated_ngram", self.repeated_ngram, 1)
        for name in ("max_repeated_ngram_ratio", "max_non_alnum_ratio"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not (isinstance(self.min_language_confidence, (int, float)) and 0 <= self.min_language_confidence <= 1):
            raise ValueError(f"min_language_confidence must be in [0, 1], got {self.min_language_confidence!r}")
        if self.languages is not None:
            bad = [c for c in self.languages if not (isinstance(c, str) and re.fullmatch(r"[a-z]{2,3}", c))]
            if bad or not self.languages:
                raise ValueError(f"languages must be ISO 639-1 codes like 'en', got {list(self.languages)}")
        if self.allowed_labels is not None and not self.allowed_labels:
            raise ValueError("allowed_labels is empty: give at least one label, or None to allow any")
        for column, minimum in self.min_scores.items():
            if not isinstance(minimum, (int, float)) or isinstance(minimum, bool) or not math.isfinite(minimum):
                raise ValueError(f"min_scores['{column}'] must be a finite number, got {minimum!r}")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rules: duplicate rule names in {names}")

    @property
    def counts_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None

    def reason_codes(self) -> list[str]:
        """The reason codes this configuration can produce, in check order."""
        codes = []
        if self.check_role_order:
            codes.append("role_order")
        if self.check_empty_response:
            codes.append("empty_response")
        if self.allowed_labels is not None:
            codes.append("label_not_allowed")
        codes += [f"low_score:{c}" for c in self.min_scores]
        if self.check_placeholders:
            codes.append("placeholder")
        if self.check_truncated:
            codes.append("truncated_response")
        if self.max_non_alnum_ratio is not None:
            codes.append("non_alphanumeric")
        if self.max_repeated_ngram_ratio is not None:
            codes.append("repetitive")
        codes += [r.code for r in self.rules]
        if self.min_tokens is not None:
            codes.append("too_short")
        if self.max_tokens is not None:
            codes.append("too_long")
        if self.languages is not None:
            codes.append("wrong_language")
        return codes


def _int_at_least(name: str, value, low: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class FilterResult:
    kept: pl.DataFrame
    drops: pl.DataFrame
    counts: dict[str, int]
    """Rows dropped per reason code, every enabled rule listed (zero included), in check order."""


# --- the filter --------------------------------------------------------------------------------


def filter_records(df: pl.DataFrame, config: FilterConfig | None = None) -> FilterResult:
    """Apply the rules of `config`; see the module docstring for the order and the reason codes."""
    config = config or FilterConfig()
    _check_score_columns(df, config.min_scores)
    if config.languages is not None:
        unknown = sorted(set(config.languages) - set(language_codes()))
        if unknown:
            raise ValueError(f"languages: unknown code(s) {unknown}; py3langid knows {', '.join(language_codes())}")
    n = df.height
    fails: list[tuple[str, pl.Series, pl.Series]] = []  # (code, failed, detail) over all rows
    alive = np.ones(n, dtype=bool)

    def record(code: str, failed: pl.Series, detail: pl.Series) -> None:
        nonlocal alive
        failed = failed.fill_null(False)
        fails.append((code, failed, detail))
        alive &= ~failed.to_numpy()

    if n:
        cheap = _cheap_checks(df, config)
        for code, failed, detail in cheap:
            record(code, failed, detail)
        for rule in config.rules:
            keep = _rule_keep(df, rule)
            detail = f"expression is not true: {rule.expr}" if rule.expr is not None else f"{rule.callable} returned false"
            record(rule.code, ~keep, pl.Series([detail] * n, dtype=pl.String))

    measured: dict[str, pl.Series] = {}
    if n and config.counts_tokens:
        counted = count_tokens(df.filter(pl.Series(alive)), config.tokenizer) if alive.any() else pl.Series([], dtype=pl.Int64)
        tokens = _scatter(counted, alive, n, pl.Int64)
        measured[TOKENS_COLUMN] = tokens
        if config.min_tokens is not None:
            record("too_short", tokens < config.min_tokens,
                   pl.select(pl.format("{} tokens < min {}", tokens, pl.lit(config.min_tokens))).to_series())
        if config.max_tokens is not None:
            record("too_long", tokens > config.max_tokens,
                   pl.select(pl.format("{} tokens > max {}", tokens, pl.lit(config.max_tokens))).to_series())
    if n and config.languages is not None:
        texts = df.filter(pl.Series(alive)).select(field_text(("user", "assistant"))).to_series().to_list()
        langs, confidence = identify_languages(texts) if texts else ([], [])
        language = _scatter(pl.Series(langs, dtype=pl.String), alive, n, pl.String)
        conf = _scatter(pl.Series(confidence, dtype=pl.Float64), alive, n, pl.Float64)
        measured[LANGUAGE_COLUMN] = language
        allowed = ", ".join(config.languages)
        wrong = ~language.is_in(list(config.languages))
        unsure = conf < config.min_language_confidence
        detail = pl.select(
            pl.when(wrong)
            .then(pl.format("{} ({}) not in {}", language, conf.round(2), pl.lit(allowed)))
            .otherwise(pl.format("{} at confidence {} < min {}", language, conf.round(2), pl.lit(config.min_language_confidence)))
        ).to_series()
        record("wrong_language", wrong | unsure, detail)

    codes = config.reason_codes()
    if not n:
        empty_measures = {TOKENS_COLUMN: pl.Int64} if config.counts_tokens else {}
        if config.languages is not None:
            empty_measures[LANGUAGE_COLUMN] = pl.String
        kept = df.with_columns(**{k: pl.Series(k, [], dtype=t) for k, t in empty_measures.items()})
        return FilterResult(kept, empty_drops(), {code: 0 for code in codes})
    if not fails:
        return FilterResult(df.with_columns(**measured), empty_drops(), {})
    frame = pl.DataFrame({f"f{i}": f for i, (_, f, _) in enumerate(fails)} | {f"d{i}": d for i, (_, _, d) in enumerate(fails)})
    verdict = frame.select(
        reason=pl.coalesce([pl.when(pl.col(f"f{i}")).then(pl.lit(code)) for i, (code, _, _) in enumerate(fails)]),
        detail=pl.coalesce([pl.when(pl.col(f"f{i}")).then(pl.col(f"d{i}")) for i in range(len(fails))]),
    )
    dropped = verdict["reason"].is_not_null()
    kept = df.with_columns(**measured).filter(~dropped)
    drop_rows = verdict.filter(dropped)
    drops = make_drops(id=df["id"].filter(dropped), step="filter", reason=drop_rows["reason"], detail=drop_rows["detail"])
    by_reason = dict(drop_rows.group_by("reason").len().iter_rows())
    return FilterResult(kept, drops, {code: by_reason.get(code, 0) for code in codes})


def _scatter(values: pl.Series, mask: np.ndarray, n: int, dtype: pl.DataType) -> pl.Series:
    """Values for the rows where `mask` is set, null elsewhere, as a full-length series."""
    out = pl.Series(values.name, [None] * n, dtype=dtype)
    index = np.flatnonzero(mask)
    return out.scatter(index, values.cast(dtype)) if len(index) else out


def _check_score_columns(df: pl.DataFrame, min_scores: dict[str, float]) -> None:
    for column in min_scores:
        if column not in df.columns:
            raise ValueError(f"min_scores: score column '{column}' is not in the dataset (columns: {', '.join(df.columns)})")
        if not df.schema[column].is_numeric():
            raise ValueError(f"min_scores: score column '{column}' is {df.schema[column]}, not numeric")


# --- cheap, vectorized checks ------------------------------------------------------------------

_ROLE_LETTER = {"system": "s", "user": "u", "assistant": "a"}
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


def _cheap_checks(df: pl.DataFrame, config: FilterConfig) -> list[tuple[str, pl.Series, pl.Series]]:
    """The structural and text heuristics, in check order, as (code, failed, detail) over all rows."""
    out = []
    n = df.height
    if config.check_role_order:
        pattern = df.select(
            pl.col("messages")
            .list.eval(pl.element().struct.field("role").fill_null("?").replace_strict(_ROLE_LETTER, default="?"))
            .list.join("")
            .fill_null("")
        ).to_series()
        roles = df.select(
            pl.col("messages").list.eval(pl.element().struct.field("role").fill_null("?")).list.join(",").fill_null("")
        ).to_series()
        failed = ~pattern.str.contains(r"^s?(ua)+$")
        detail = pl.select(
            pl.format("roles {}: expected [system,] user, assistant[, user, assistant...]",
                      pl.when(roles == "").then(pl.lit("(none)")).otherwise(roles))
        ).to_series()
        out.append(("role_order", failed, detail))

    turns = None
    if config.check_empty_response or config.check_placeholders or config.check_truncated:
        turns = _turns(df)
    assistant = turns.filter(pl.col("role") == "assistant") if turns is not None else None
    where = pl.when(pl.col("of_role") > 1).then(pl.format(" (assistant turn {})", pl.col("nth"))).otherwise(pl.lit(""))

    if config.check_empty_response:
        out.append(("empty_response", *_first_per_row(
            assistant, pl.col("content").fill_null("").str.strip_chars() == "",
            pl.format("empty assistant response{}", where), n)))

    if config.allowed_labels is not None:
        label = df["label"]
        failed = label.is_null() | ~label.is_in(list(config.allowed_labels))
        allowed = ", ".join(config.allowed_labels)
        detail = pl.select(
            pl.when(label.is_null()).then(pl.lit(f"no label (allowed: {allowed})"))
            .otherwise(pl.format("label '{}' not in allowed: {}", label, pl.lit(allowed)))
        ).to_series()
        out.append(("label_not_allowed", failed, detail))

    for column, minimum in config.min_scores.items():
        value = df[column].cast(pl.Float64)
        failed = value.is_null() | value.is_nan() | (value < minimum)
        detail = pl.select(
            pl.when(value.is_null()).then(pl.lit(f"no {column} value (min {minimum:g})"))
            .otherwise(pl.format("{} {} < min {}", pl.lit(column), df[column], pl.lit(f"{minimum:g}")))
        ).to_series()
        out.append((f"low_score:{column}", failed, detail))

    if config.check_placeholders:
        prose = pl.col("content").fill_null("").str.replace_all(_CODE_BLOCK, " ").str.replace_all(_INLINE_CODE, " ")
        found = pl.coalesce([prose.str.extract(p, 1) for p in _PLACEHOLDERS])
        candidates = turns.filter(pl.col("content").str.contains(r"[{<\[]"))  # most turns have no bracket at all
        hits = candidates.with_columns(found=found).filter(pl.col("found").is_not_null())
        out.append(("placeholder", *_first_per_row(
            hits, pl.lit(True), pl.format("placeholder \"{}\" in {} turn", pl.col("found"), pl.col("role")), n)))

    if config.check_truncated:
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
        why = pl.coalesce(reasons)
        out.append(("truncated_response", *_first_per_row(
            assistant.with_columns(why=why), pl.col("why").is_not_null(), pl.format("{}{}", pl.col("why"), where), n)))

    if config.max_non_alnum_ratio is not None:
        text = field_text(("user", "assistant"))
        chars = text.str.len_chars()
        ratio = df.select(
            pl.when(chars > 0).then(text.str.count_matches(r"[^\p{L}\p{N}\s]") / chars).otherwise(0.0)
        ).to_series()
        limit = config.max_non_alnum_ratio
        out.append(("non_alphanumeric", ratio > limit, pl.select(
            pl.format("{} of characters are symbols > max {}", ratio.round(2), pl.lit(limit))).to_series()))

    if config.max_repeated_ngram_ratio is not None:
        k = config.repeated_ngram
        ratio = repeated_ngram_ratio(df.select(field_text(("assistant",))).to_series(), k)
        limit = config.max_repeated_ngram_ratio
        out.append(("repetitive", ratio > limit, pl.select(
            pl.format("{} of word {}-grams are repeats > max {}", ratio.round(2), pl.lit(k), pl.lit(limit))).to_series()))
    return out


def _turns(df: pl.DataFrame) -> pl.DataFrame:
    """One row per turn: row (index of the record), role, content, nth (1-based among the record's
    turns of that role) and of_role (how many turns of that role the record has)."""
    return (
        df.select("messages")
        .with_row_index("row")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role").is_not_null())
        .with_columns(
            nth=pl.int_range(1, pl.len() + 1).over("row", "role"),
            of_role=pl.len().over("row", "role"),
        )
    )


def _first_per_row(turns: pl.DataFrame, failed: pl.Expr, detail: pl.Expr, n: int) -> tuple[pl.Series, pl.Series]:
    """Per record: does any of its turns fail, and the detail of the first that does."""
    hits = turns.filter(failed).group_by("row", maintain_order=True).agg(detail.first().alias("detail"))
    index = hits["row"].to_numpy()
    mask = np.zeros(n, dtype=bool)
    mask[index] = True
    details = pl.Series("detail", [None] * n, dtype=pl.String)
    if len(index):
        details = details.scatter(index, hits["detail"])
    return pl.Series("failed", mask), details


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


# --- user rules --------------------------------------------------------------------------------


def _rule_keep(df: pl.DataFrame, rule: UserRule) -> pl.Series:
    """The rule's verdict per row: True = keep; null counts as false."""
    if rule.expr is not None:
        try:
            keep = df.select(pl.sql_expr(rule.expr).alias("keep")).to_series()
        except Exception as exc:
            raise ValueError(f"rule '{rule.name}': cannot evaluate {rule.expr!r}: {exc}") from None
        if keep.len() == 1 and df.height != 1:  # a constant expression
            keep = pl.Series("keep", [keep[0]] * df.height, dtype=keep.dtype)
    else:
        fn = _load_callable(rule)
        try:
            value = fn(df)
        except Exception as exc:
            raise ValueError(f"rule '{rule.name}': {rule.callable} failed: {type(exc).__name__}: {exc}") from exc
        keep = value if isinstance(value, pl.Series) else pl.Series("keep", value)
    if keep.dtype != pl.Boolean and not (keep.dtype == pl.Null):
        raise ValueError(f"rule '{rule.name}' must give booleans (True = keep), got {keep.dtype}")
    if keep.len() != df.height:
        raise ValueError(f"rule '{rule.name}' gave {keep.len()} values for {df.height} rows")
    return keep.cast(pl.Boolean).fill_null(False)


def _load_callable(rule: UserRule) -> Callable[[pl.DataFrame], object]:
    module_name, _, attr = rule.callable.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"rule '{rule.name}': cannot import module '{module_name}': {exc}") from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"rule '{rule.name}': '{module_name}' has no attribute '{attr}'")
    if not callable(target):
        raise ValueError(f"rule '{rule.name}': {rule.callable} is not callable")
    return target


# --- tokens ------------------------------------------------------------------------------------


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


# --- language ----------------------------------------------------------------------------------

LANGID_MAX_CHARS = 2000
"""Language identification reads the first this many characters of a record (enough for langid)."""


class _LanguageIdentifier:
    """py3langid's naive Bayes model, run on many texts at once.

    `py3langid.classify` walks a byte automaton in a Python loop, about a millisecond per
    row; here the automaton advances every text by one byte per numpy step, and the
    feature counts meet the model in one sparse product. Same model, same scores.
    Falls back to py3langid's own loop if its internals are not what this expects.
    """

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        m = self.model
        try:
            self.nextmove = np.asarray(m.tk_nextmove, dtype=np.int64)
            self.rowbase = np.asarray(m._rowbase, dtype=np.int64)
            self.output = np.asarray(m.tk_output, dtype=np.int64)
            self.ptc = np.asarray(m.nb_ptc, dtype=np.float32)
            self.pc = np.asarray(m.nb_pc, dtype=np.float32)
            self.classes = list(m.nb_classes)
            self.alias = list(m._alias_pairs)
            self.fast = self.ptc.shape == (self.output.max() + 1, len(self.classes))
        except (AttributeError, TypeError, ValueError):
            self.fast = False

    @staticmethod
    def encode(text: str) -> bytes:
        """py3langid's preprocessing: all-caps text lower-cased, NFC, UTF-8."""
        text = text[:LANGID_MAX_CHARS]
        if text.isupper():
            text = text.lower()
        return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")

    def classify(self, texts: list[str], chunk: int = 4096) -> tuple[list[str], np.ndarray]:
        if not self.fast:
            pairs = [self.model.classify(t[:LANGID_MAX_CHARS]) for t in texts]
            return [p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float64)
        encoded = [self.encode(t) for t in texts]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        scores = np.zeros((len(texts), len(self.classes)), dtype=np.float32)
        for start in range(0, len(texts), chunk):
            rows = order[start : start + chunk]
            scores[rows] = self._raw_scores([encoded[i] for i in rows], lengths[rows])
        scores *= (1.0 / np.sqrt(np.maximum(lengths, 1)))[:, None].astype(np.float32)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self.alias:  # a label listed twice: fold the second column into the first
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        best = scores.argmax(axis=1)
        return [self.classes[b] for b in best], scores[np.arange(len(texts)), best].astype(np.float64)

    def _raw_scores(self, encoded: list[bytes], lengths: np.ndarray) -> np.ndarray:
        """Naive Bayes log scores for texts sorted by decreasing length (0 for texts with no feature)."""
        from scipy.sparse import csr_matrix

        m, width = len(encoded), int(lengths[0]) if len(lengths) else 0
        grid = np.zeros((m, max(width, 1)), dtype=np.uint8)
        if width:
            flat = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            row_of = np.repeat(np.arange(m), lengths)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            grid[row_of, np.arange(flat.size) - starts] = flat
        active = np.searchsorted(-lengths, -np.arange(width), side="left")  # rows longer than each position
        state = np.zeros(m, dtype=np.int64)
        hit_rows, hit_features = [], []
        for pos in range(width):
            k = active[pos]
            s = self.nextmove[self.rowbase[state[:k]] + grid[:k, pos]]
            state[:k] = s
            feature = self.output[s]
            found = np.flatnonzero(feature >= 0)
            if found.size:
                hit_rows.append(found)
                hit_features.append(feature[found])
        out = np.zeros((m, len(self.classes)), dtype=np.float32)
        if not hit_rows:
            return out
        n_features = self.ptc.shape[0]
        keys = np.concatenate(hit_rows) * n_features + np.concatenate(hit_features)
        keys, counts = np.unique(keys, return_counts=True)
        counts_matrix = csr_matrix(
            (np.log1p(counts.astype(np.float32)), (keys // n_features, keys % n_features)), shape=(m, n_features)
        )
        has_features = np.diff(counts_matrix.indptr) > 0
        out[has_features] = (counts_matrix[has_features] @ self.ptc) + self.pc
        return out


@functools.lru_cache(maxsize=1)
def _language_identifier() -> _LanguageIdentifier:
    try:
        return _LanguageIdentifier()
    except ImportError:
        raise ValueError("language filtering needs py3langid: pip install py3langid") from None


def identify_languages(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(ISO 639-1 code, probability) per text, with py3langid's model (first LANGID_MAX_CHARS characters)."""
    if not texts:
        return [], np.zeros(0)
    return _language_identifier().classify(texts)


def language_codes() -> list[str]:
    """The language codes the identifier knows."""
    return sorted(set(_language_identifier().model.nb_classes))

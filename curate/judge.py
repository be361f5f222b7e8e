"""LLM-as-judge: score every record against a rubric with the local LLM.

The judge answers in JSON constrained by a schema ({criterion: 1-5, ..., rationale}),
so every answer parses. For classification data it also names the label it
would give, and whether it agrees with the record's. Scores land in columns
(`judge_<criterion>`, `judge_score` = their mean, `judge_rationale`,
`judge_label`, `judge_agrees`) that `curate filter --min-score` and
`curate select --score-column` use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import polars as pl
from tqdm import tqdm

from curate.engines import Engine
from curate.llm import SamplingConfig

DEFAULT_RUBRIC = {
    "correctness": "Is the response correct and consistent with the request?",
    "helpfulness": "Does the response do what the user asked, completely?",
    "format": "Is the response well formed, clear and of a fitting length?",
}
SCALE = (1, 2, 3, 4, 5)


@dataclass
class JudgeConfig:
    """What the judge is asked. Greedy decoding (temperature 0) so that scores reproduce."""

    rubric: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUBRIC))
    labels: tuple[str, ...] | None = None
    """For classification: the allowed labels; the judge picks one per row."""
    batch_size: int = 32
    max_tokens: int = 160

    def __post_init__(self) -> None:
        if not self.rubric:
            raise ValueError("the rubric needs at least one criterion")
        bad = [k for k in self.rubric if not k.isidentifier()]
        if bad:
            raise ValueError(f"rubric criteria must be simple names (letters, digits, _): {bad}")


def _conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)


def score_schema(config: JudgeConfig) -> dict:
    props = {name: {"type": "integer", "enum": list(SCALE)} for name in config.rubric}
    props["rationale"] = {"type": "string", "maxLength": 300}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def score_prompt(messages: list[dict], config: JudgeConfig) -> list[dict[str, str]]:
    criteria = "\n".join(f"- {name}: {question}" for name, question in config.rubric.items())
    return [
        {"role": "system", "content": "You are a strict data-quality judge. Rate the assistant's last reply "
                                      f"on each criterion from 1 (bad) to 5 (excellent):\n{criteria}\n"
                                      "Answer in JSON with one integer per criterion and a short rationale."},
        {"role": "user", "content": _conversation_text(messages)},
    ]


def label_prompt(messages: list[dict], labels: tuple[str, ...]) -> list[dict[str, str]]:
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    return [
        {"role": "system", "content": f"Classify the text into one of: {', '.join(labels)}. Answer in JSON."},
        {"role": "user", "content": user},
    ]


def judge(df: pl.DataFrame, engine: Engine, config: JudgeConfig | None = None, *, progress: bool = True) -> pl.DataFrame:
    """`df` with the judge's columns added."""
    config = config or JudgeConfig()
    if df.height == 0:
        raise ValueError("the dataset is empty: nothing to judge")
    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=config.max_tokens, seed=0)
    conversations = df["messages"].to_list()
    scores: dict[str, list[int | None]] = {name: [] for name in config.rubric}
    rationales: list[str | None] = []
    labels: list[str | None] = []
    schema = score_schema(config)
    label_schema = ({"type": "object", "properties": {"label": {"type": "string", "enum": list(config.labels)}},
                     "required": ["label"]} if config.labels else None)
    with tqdm(total=len(conversations), desc="judging", unit="row", disable=not progress) as bar:
        for start in range(0, len(conversations), config.batch_size):
            batch = conversations[start : start + config.batch_size]
            for gen in engine.chat([score_prompt(m, config) for m in batch], greedy, json_schema=schema):
                answer = _parse(gen.text)
                for name in config.rubric:
                    value = answer.get(name)
                    scores[name].append(value if value in SCALE else None)
                rationales.append(answer.get("rationale"))
            if config.labels:
                for gen in engine.chat([label_prompt(m, config.labels) for m in batch], greedy, json_schema=label_schema):
                    labels.append(_parse(gen.text).get("label"))
            bar.update(len(batch))
    columns = [pl.Series(f"judge_{name}", values, dtype=pl.Int64) for name, values in scores.items()]
    out = df.with_columns(*columns, pl.Series("judge_rationale", rationales, dtype=pl.String))
    out = out.with_columns(pl.mean_horizontal([f"judge_{n}" for n in config.rubric]).alias("judge_score"))
    if config.labels:
        out = out.with_columns(pl.Series("judge_label", labels, dtype=pl.String))
        out = out.with_columns((pl.col("judge_label") == pl.col("label")).alias("judge_agrees"))
    return out


def _parse(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}

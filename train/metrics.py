"""Metrics by task type, on plain lists of gold answers and predictions.

- classification: accuracy, macro-F1 over the label set, confusion matrix (scikit-learn);
- exact answers: exact match and token F1 after SQuAD's normalization (lower case, no
  punctuation, no articles, collapsed whitespace), the usual reading-comprehension pair;
- free text: ROUGE-L F-measure (Google's `rouge-score`, with Porter stemming), and an
  optional LLM-judge win rate computed in `train.evaluate`.

Every metric is a fraction in [0, 1]; a prediction that could not be parsed is `None`
and counts as wrong.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

CLASSIFICATION, EXACT, FREE = "classification", "exact", "free"
TASKS = (CLASSIFICATION, EXACT, FREE)
METRICS = {
    CLASSIFICATION: ("accuracy", "macro_f1"),
    EXACT: ("exact_match", "token_f1"),
    FREE: ("rouge_l", "judge_win_rate"),
}
NONE_LABEL = "(none)"  # the confusion matrix's column for answers outside the label set


# -- classification --------------------------------------------------------------------


def classification_metrics(gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over `labels` (every label counts, predicted or not) and the confusion matrix.

    Rows of the matrix are gold labels, columns predictions; a `None` prediction goes to
    a last "(none)" column, which appears only when some prediction is `None`.
    """
    from sklearn.metrics import confusion_matrix, f1_score

    _same_length(gold, predicted)
    labels = list(dict.fromkeys([*labels, *gold]))  # a gold label outside the set still counts
    pred = [p if p is not None else NONE_LABEL for p in predicted]
    columns = labels + ([NONE_LABEL] if NONE_LABEL in pred else [])
    matrix = confusion_matrix(gold, pred, labels=columns)[: len(labels)] if gold else []
    return {
        "accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0,
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)) if gold else 0.0,
        "confusion": {"labels": labels, "predicted": columns, "matrix": [[int(v) for v in row] for row in matrix]},
        "unparsed": sum(p is None for p in predicted),
    }


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label an unconstrained answer names: the whole answer, else the first label mentioned.

    Case and surrounding punctuation are ignored; `None` when no label is named.
    """
    answer = _squash(text)
    by_norm = {_squash(label): label for label in labels}
    if answer in by_norm:
        return by_norm[answer]
    found = [(m.start(), label) for norm, label in by_norm.items() if norm
             for m in [re.search(rf"(?<!\w){re.escape(norm)}(?!\w)", answer)] if m]
    return min(found)[1] if found else None


def _squash(text: str) -> str:
    return " ".join(text.lower().strip().strip(string.punctuation + "\"'`").split())


# -- exact answers -------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(gold: str, predicted: str | None) -> float:
    return float(predicted is not None and normalize_answer(gold) == normalize_answer(predicted))


def token_f1(gold: str, predicted: str | None) -> float:
    """Harmonic mean of token precision and recall on normalized answers (SQuAD's F1)."""
    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(predicted or "").split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    common = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_metrics(gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, Any]:
    _same_length(gold, predicted)
    return {
        "exact_match": _mean(exact_match(g, p) for g, p in zip(gold, predicted)),
        "token_f1": _mean(token_f1(g, p) for g, p in zip(gold, predicted)),
    }


# -- free text -----------------------------------------------------------------------------


def rouge_l(gold: Sequence[str], predicted: Sequence[str | None]) -> list[float]:
    """ROUGE-L F-measure per row (longest common subsequence of stemmed tokens)."""
    from rouge_score import rouge_scorer

    _same_length(gold, predicted)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(g, p or "")["rougeL"].fmeasure for g, p in zip(gold, predicted)]


def free_text_metrics(gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, Any]:
    return {"rouge_l": _mean(rouge_l(gold, predicted))}


def win_rate(outcomes: Sequence[float]) -> float:
    """Mean of per-row outcomes: 1 a win, 0.5 a tie, 0 a loss."""
    return _mean(outcomes)


# -- dispatch ------------------------------------------------------------------------------


def score(task: str, gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] = ()) -> dict[str, Any]:
    """The task type's metrics for one contender."""
    if task == CLASSIFICATION:
        return classification_metrics(gold, predicted, labels)
    if task == EXACT:
        return exact_metrics(gold, predicted)
    if task == FREE:
        return free_text_metrics(gold, predicted)
    raise ValueError(f"unknown task type {task!r}; expected one of {', '.join(TASKS)}")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _same_length(gold: Sequence, predicted: Sequence) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold answers but {len(predicted)} predictions")

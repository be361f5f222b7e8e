"""Label check: drop rows whose label their own text contradicts (confident learning, cleanlab).

A small teacher writes plausible-looking rows under the wrong label, or off the task
altogether, and a judge of the same size cannot tell. What does tell is the data the
labels came from: a logistic regression on the sentence embeddings of the rows' text
predicts each row's label, and cleanlab's `find_label_issues` (Northcutt et al.,
"Confident Learning", 2021) flags the rows whose given label the predicted
probabilities contradict, estimating per class how noisy the labels are.

Two modes:

* no trusted rows: every row is predicted out-of-fold (k-fold cross-validation), as
  cleanlab recommends, and any row can be flagged;
* trusted rows (a polars SQL condition, e.g. ``source = 'tickets'`` for the real,
  hand-labelled rows): the classifier learns from them alone, other rows are predicted
  by it and only they can be dropped. Generated rows are then held to what the real
  data says each label means. Trusted rows are predicted out-of-fold among themselves,
  so cleanlab's per-class thresholds come from honest probabilities.

Kept rows gain `label_quality`, the predicted probability of their own label
(cleanlab's self-confidence score), which `curate select --score-column` can use.
Rows without a label are neither checked nor dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl

from curate.conditions import ConditionError, condition_mask
from curate.dedup.semantic import embed
from curate.drops import empty_drops, make_drops
from curate.text import field_text

LABEL_QUALITY_COLUMN = "label_quality"
METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_self_confidence", "low_normalized_margin")
"""cleanlab's `filter_by` choices; the first is its default."""


@dataclass
class LabelCheckConfig:
    """How `curate check-labels` decides that a label is wrong."""

    trusted: str | None = None
    """Polars SQL condition for rows whose labels are taken as true (None: no row is)."""
    method: str = "prune_by_noise_rate"
    """cleanlab `filter_by`: prune_by_noise_rate (its default) removes, per pair of classes, as many
    rows as the estimated noise rate says, those with the largest margin against their label;
    predicted_neq_given drops every row the classifier labels otherwise (the strictest)."""
    min_quality: float | None = None
    """Also drop checked rows whose own label gets a predicted probability below this (None: off).
    Rows off the task altogether spread their probability over all labels, and confident
    learning, which looks for a *different* label, keeps them; this catches them."""
    fields: tuple[str, ...] = ("system", "user")
    """The text a label is predicted from: the prompt turns, since the reply is the label."""
    folds: int = 5
    """Cross-validation folds for out-of-fold probabilities (fewer when a class has fewer rows)."""
    regularization: float = 1.0
    """Inverse regularization strength C of the logistic regression (scikit-learn's default)."""
    embedder: str | None = None
    """Embedder spec (None: the packaged all-MiniLM-L6-v2)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.min_quality is not None and not 0 < self.min_quality <= 1:
            raise ValueError(f"min_quality must be in (0, 1], got {self.min_quality}")
        if self.regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {self.regularization}")


@dataclass
class LabelCheckResult:
    kept: pl.DataFrame
    drops: pl.DataFrame
    counts: dict[str, int]


def check_labels(df: pl.DataFrame, config: LabelCheckConfig | None = None, *, progress: bool = True) -> LabelCheckResult:
    """Drop the rows whose labels the data contradicts; see the module docstring."""
    from cleanlab.filter import find_label_issues

    config = config or LabelCheckConfig()
    if df.height == 0:
        raise ValueError("the dataset is empty")
    labelled = np.flatnonzero(df["label"].is_not_null().to_numpy())
    if labelled.size == 0:
        raise ValueError("no row has a label: the label check needs labelled rows")
    if config.trusted is None:  # every row is learnt from (out-of-fold) and every row is checked
        learn = checked = np.ones(labelled.size, dtype=bool)
    else:  # learn from the trusted rows, check the others
        learn = _trusted_mask(df, config.trusted)[labelled]
        checked = ~learn
        if not learn.any():
            raise ValueError(f"no labelled row matches the trusted condition {config.trusted!r}")

    labels = df["label"].gather(labelled).to_list()
    counts = Counter(labels[i] for i in np.flatnonzero(learn))
    classes = sorted(counts)
    too_few = {c: n for c, n in counts.items() if n < 2}
    if len(classes) < 2 or too_few:
        what = "trusted rows" if config.trusted else "rows"
        raise ValueError(f"the label check needs at least 2 labels with 2 {what} each; found {dict(counts)}")

    texts = df.select(field_text(config.fields)).to_series().gather(labelled).to_list()
    vectors = embed(texts, config.embedder, progress=progress)
    probs = _predicted_probabilities(vectors, labels, classes, learn, config)

    # A label the trusted rows never use cannot be predicted at all: such rows are issues outright.
    index = {c: k for k, c in enumerate(classes)}
    unknown = np.array([lab not in index for lab in labels])
    given = np.array([index.get(lab, 0) for lab in labels])
    issues = np.zeros(labelled.size, dtype=bool)
    known = ~unknown
    if known.sum() and len(set(given[known])) > 1:
        issues[known] = find_label_issues(given[known], probs[known], filter_by=config.method)
    self_confidence = np.where(unknown, 0.0, probs[np.arange(labelled.size), given])
    unsure = ~issues & known & (self_confidence < (config.min_quality or 0.0))
    issues |= unknown | unsure
    issues &= checked

    quality = np.full(df.height, None, dtype=object)
    quality[labelled] = self_confidence
    dropped_rows = labelled[issues]
    keep = np.ones(df.height, dtype=bool)
    keep[dropped_rows] = False
    kept = df.with_columns(pl.Series(LABEL_QUALITY_COLUMN, quality.tolist(), dtype=pl.Float64)).filter(pl.Series(keep))

    if dropped_rows.size == 0:
        return LabelCheckResult(kept, empty_drops(), {})
    flagged = np.flatnonzero(issues)
    details, reasons = [], []
    for k in flagged:
        predicted = classes[int(np.argmax(probs[k]))]
        if unknown[k]:
            reasons.append("label_unknown")
            details.append(f"label {labels[k]!r} is not one of the trusted rows' labels ({', '.join(classes)})")
        elif unsure[k]:
            reasons.append("low_label_quality")
            details.append(f"p({labels[k]})={self_confidence[k]:.2f} is below {config.min_quality:g}; "
                           f"the likeliest label is {predicted!r} (p={probs[k].max():.2f})")
        else:
            reasons.append("label_issue")
            details.append(f"labelled {labels[k]!r} but reads as {predicted!r} "
                           f"(p={probs[k].max():.2f}; p({labels[k]})={self_confidence[k]:.2f})")
    drops = make_drops(id=df["id"].gather(dropped_rows), step="check-labels", reason=reasons,
                       similarity=self_confidence[flagged].tolist(), detail=details)
    return LabelCheckResult(kept, drops, dict(Counter(reasons)))


def _trusted_mask(df: pl.DataFrame, condition: str) -> np.ndarray:
    try:
        return condition_mask(df, condition).to_numpy()
    except ConditionError as exc:
        raise ValueError(f"the trusted condition {condition!r} {exc}") from None


def _predicted_probabilities(vectors: np.ndarray, labels: list[str], classes: list[str], learn: np.ndarray,
                             config: LabelCheckConfig) -> np.ndarray:
    """Class probabilities per row: out-of-fold for the rows learnt from, by the fitted model for the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    index = {c: k for k, c in enumerate(classes)}
    rows = np.flatnonzero(learn)
    y = np.array([index[labels[i]] for i in rows])
    folds = min(config.folds, int(np.bincount(y).min()))
    model = LogisticRegression(C=config.regularization, max_iter=1000)
    probs = np.zeros((len(labels), len(classes)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    probs[rows] = cross_val_predict(model, vectors[rows], y, cv=cv, method="predict_proba")
    rest = np.flatnonzero(~learn)
    if rest.size:
        probs[rest] = model.fit(vectors[rows], y).predict_proba(vectors[rest])
    return probs

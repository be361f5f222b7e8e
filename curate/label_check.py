"""Label check: find rows whose label their own text contradicts (confident learning, cleanlab).

A small teacher writes plausible-looking rows under the wrong label, or off the task
altogether, and a judge of the same size cannot tell. What does tell is the data the
labels came from: a logistic regression on the sentence embeddings of the rows' text
predicts each row's label, and cleanlab's `find_label_issues` (Northcutt et al.,
"Confident Learning", 2021) flags the rows whose given label the predicted
probabilities contradict, estimating per class how noisy the labels are.

Two modes:

* no trusted rows: every row is predicted out-of-fold (k-fold cross-validation), as
  cleanlab recommends, and any row can be suspected;
* trusted rows (a polars SQL condition, e.g. ``source = 'tickets'`` for the real,
  hand-labelled rows): the classifier learns from them alone, other rows are predicted
  by it and only they can be suspected. Generated rows are then held to what the real
  data says each label means. Trusted rows are predicted out-of-fold among themselves,
  so cleanlab's per-class thresholds come from honest probabilities.

What happens to a suspected row (`action`) depends on what it was checked against.
Held to trusted rows (auto = drop), a generated row that reads as another label goes.
Checked against its peers (auto = flag), a suspect is as often a clean row on an
ambiguous class boundary as a wrong label: on real data with clean labels, dropping
every suspect removed 152 of 1,750 rows, 1-3 of 22 read by hand being label errors,
most heavily from the smallest classes (issue 14). So flag keeps suspects, marked
`label_issue` with `label_suggested` (route them with `review push --where label_issue`),
and drops only strong contradictions (reason `label_contradicted`): p(given label) <=
`strong_given` (0.05) and p(likeliest label) >= `strong_predicted` (0.6).

Measured on `tests/corpus.py` (517 real docstrings, 7 classes of 18-138 rows,
all-MiniLM-L6-v2, 5 folds), with the defaults. Clean labels: 0 dropped (cleanlab's default
method suspects none; predicted_neq_given suspects 21, the two nearest the thresholds at
p(given)=0.04, p(top)=0.57 and 0.05, 0.71: all 21 kept, flagged). 15% flipped labels
(78 rows, seeds 0-4): 57-70 flips suspected (73-90%; 75-78 with predicted_neq_given),
22-28 rows dropped (4.3-5.4%), every one a real flip; without the cap 27-37, also all
flips. Dropping every suspect instead drops 64-77 rows, 89-93% of them flips.

Whatever the action, no class loses more than `max_class_drop` (10%) of its rows: beyond
that the class keeps its weakest-evidence suspects, flagged, and the result says so
(`capped_<label>` counts and a warning), since a quietly emptied small class costs more
than a few wrong labels. On the flipped sets above the cap held 1-3 small classes each.

Kept rows gain `label_quality`, the predicted probability of their own label
(cleanlab's self-confidence score), which `curate select --score-column` can use.
Rows without a label are neither checked nor dropped (their new columns are null).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import click
import numpy as np
import polars as pl

from curate.conditions import ConditionError, condition_mask
from curate.embeddings import embed
from curate.drops import empty_drops, make_drops
from curate.step import Step, StepResult, embedder_model, embedder_option, fields_option, option, unit_interval
from curate.text import field_text

LABEL_QUALITY_COLUMN = "label_quality"
LABEL_ISSUE_COLUMN = "label_issue"
LABEL_SUGGESTED_COLUMN = "label_suggested"
ACTIONS = ("auto", "flag", "drop")
METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_self_confidence", "low_normalized_margin")
"""cleanlab's `filter_by` choices; the first is its default."""


@dataclass
class LabelCheckConfig:
    """How `curate check-labels` decides that a label is wrong, and what it does about it."""

    trusted: str | None = option(None, "Polars SQL condition for rows whose labels are true, e.g. \"source = 'tickets'\": "
                                 "the check learns from them and checks only other rows. [default: none, all rows "
                                 "out-of-fold]", metavar="CONDITION")
    """Polars SQL condition for rows whose labels are taken as true (None: no row is)."""
    method: str = option("prune_by_noise_rate", "cleanlab filter_by: how contradicted a label must be to be suspected; "
                         "predicted_neq_given is the strictest.", type=click.Choice(METHODS))
    """cleanlab `filter_by`: prune_by_noise_rate (its default) flags, per pair of classes, as many
    rows as the estimated noise rate says, those with the largest margin against their label;
    predicted_neq_given flags every row the classifier labels otherwise (the strictest)."""
    min_quality: float | None = option(None, "Also suspect checked rows whose own label's predicted probability is "
                                       "below this (off-task rows).", type=float, callback=unit_interval)
    """Also suspect checked rows whose own label gets a predicted probability below this (None: off).
    Rows off the task altogether spread their probability over all labels, and confident
    learning, which looks for a *different* label, keeps them; this catches them."""
    action: str = option("auto", "drop: drop every suspected row. flag: keep them with label_issue and label_suggested, "
                         "drop only strong contradictions. auto: drop with --trusted, flag without.",
                         type=click.Choice(ACTIONS))
    """What happens to a suspected row. drop: it is dropped. flag: it is kept with label_issue true
    and label_suggested, and dropped only on strong evidence (strong_given, strong_predicted).
    auto: drop with trusted rows (generated rows held to real ones), flag without (every row is
    checked against the others, and a clean row on an ambiguous class boundary looks suspect)."""
    strong_given: float = option(0.05, "flag: drop a suspected row only if its own label's probability is at most "
                                 "this...", type=click.FloatRange(0, 1))
    """flag: drop a suspected row only if its own label's probability is at most this ..."""
    strong_predicted: float = option(0.6, "...and the likeliest label's at least this.", type=click.FloatRange(0, 1))
    """... and the likeliest label's at least this (reason label_contradicted). See the module
    docstring for what these defaults do on real data."""
    max_class_drop: float = option(0.1, "Never remove more than this share of one class; the rest of its suspects are "
                                   "kept flagged, with a warning. 1: no cap.", type=click.FloatRange(0, 1))
    """Never remove more than this share of any one class (its labelled rows in the input), whatever
    the action: beyond it the rows with the weakest evidence are kept, flagged, and the result says
    so (counts `capped_<label>`, a warning). 1.0: no cap. A label the trusted rows never use is
    no class of the task and is not capped."""
    fields: tuple[str, ...] = fields_option(("system", "user"), "Text the label is predicted from.")
    """The text a label is predicted from: the prompt turns, since the reply is the label."""
    folds: int = option(5, "Cross-validation folds for out-of-fold probabilities.")
    """Cross-validation folds for out-of-fold probabilities (fewer when a class has fewer rows)."""
    regularization: float = 1.0
    """Inverse regularization strength C of the logistic regression (scikit-learn's default)."""
    embedder: str | None = embedder_option()
    """Embedder spec (None: the packaged all-MiniLM-L6-v2)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.min_quality is not None and not 0 < self.min_quality <= 1:
            raise ValueError(f"min_quality must be in (0, 1], got {self.min_quality}")
        for name in ("strong_given", "strong_predicted", "max_class_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {self.regularization}")

    @property
    def resolved_action(self) -> str:
        """flag or drop: what auto means for this configuration."""
        if self.action != "auto":
            return self.action
        return "drop" if self.trusted is not None else "flag"


class CheckLabels(Step):
    """Flag or drop rows whose label their text contradicts (confident learning with cleanlab).

    A logistic regression on sentence embeddings predicts every row's label; cleanlab
    flags the rows whose given label the predictions contradict. Without --trusted
    they are kept with label_issue true and label_suggested (route them to review with
    `curate review push --route filter --where label_issue`); only strong
    contradictions are dropped. Kept rows gain label_quality, the predicted
    probability of their own label. No class loses more than --max-class-drop.

    \b
    Example (generated rows held to what the real, hand-labelled rows say):
      curate check-labels all.parquet --trusted "source = 'tickets'" --min-quality 0.5 -o checked.parquet
    """

    name = "check-labels"
    Config = LabelCheckConfig

    def models(self) -> list[dict]:
        return embedder_model(self.config.embedder)

    def run(self, records: pl.DataFrame) -> StepResult:
        result = check_labels(records, self.config)
        result.warnings = [f"check-labels capped a class: {line}" for line in result.warnings]
        result.counts = {k: v for k, v in result.counts.items() if k == "flagged" or k.startswith("capped_")}
        capped = sum(v for k, v in result.counts.items() if k.startswith("capped_"))
        result.note = (f"; flagged: {result.counts['flagged']} (label_issue)"
                       + (f", {capped} of them kept by the cap" if capped else ""))
        result.parameters = {"action_taken": self.config.resolved_action}
        return result


LabelCheckResult = StepResult  # the name before the step contract
"""Counts: drops by reason, `flagged` (kept with label_issue true) and `capped_<label>` (kept by the
cap); warnings: one line per class the cap held back."""


@dataclass
class Decision:
    """What happens to each labelled row, before it is written out."""

    removed: np.ndarray
    """Dropped rows (bool per labelled row)."""
    flagged: np.ndarray
    """Suspected rows that are kept (label_issue true)."""
    capped: dict[str, tuple[int, int, int]]
    """label -> (rows of the class, rows it would have lost, rows it lost) where the cap held."""


def check_labels(df: pl.DataFrame, config: LabelCheckConfig | None = None, *, progress: bool = True) -> StepResult:
    """Flag or drop the rows whose labels the data contradicts; see the module docstring."""
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
    suspected = (issues | unknown | unsure) & checked
    decision = decide(suspected, labels, unknown, self_confidence, probs.max(axis=1), config)

    suggested = np.array(classes, dtype=object)[probs.argmax(axis=1)]
    kept = df.with_columns(
        _column(LABEL_QUALITY_COLUMN, df.height, labelled, self_confidence, pl.Float64),
        _column(LABEL_ISSUE_COLUMN, df.height, labelled, decision.flagged, pl.Boolean),
        _column(LABEL_SUGGESTED_COLUMN, df.height, labelled, suggested, pl.String),
    )
    keep = np.ones(df.height, dtype=bool)
    keep[labelled[decision.removed]] = False
    kept = kept.filter(pl.Series(keep))

    dropped = np.flatnonzero(decision.removed)
    details, reasons = [], []
    for k in dropped:
        predicted, top, own = classes[int(np.argmax(probs[k]))], probs[k].max(), self_confidence[k]
        if unknown[k]:
            reasons.append("label_unknown")
            details.append(f"label {labels[k]!r} is not one of the trusted rows' labels ({', '.join(classes)})")
        elif config.resolved_action == "flag":
            reasons.append("label_contradicted")
            details.append(f"labelled {labels[k]!r} but reads as {predicted!r} (p={top:.2f} >= "
                           f"{config.strong_predicted:g}; p({labels[k]})={own:.2f} <= {config.strong_given:g})")
        elif unsure[k]:
            reasons.append("low_label_quality")
            details.append(f"p({labels[k]})={own:.2f} is below {config.min_quality:g}; "
                           f"the likeliest label is {predicted!r} (p={top:.2f})")
        else:
            reasons.append("label_issue")
            details.append(f"labelled {labels[k]!r} but reads as {predicted!r} (p={top:.2f}; p({labels[k]})={own:.2f})")
    drops = (make_drops(id=df["id"].gather(labelled[dropped]), step="check-labels", reason=reasons,
                        similarity=self_confidence[dropped].tolist(), detail=details)
             if dropped.size else empty_drops())

    result_counts = {**Counter(reasons), "flagged": int(decision.flagged.sum())}
    warnings = []
    for label, (rows, would, lost) in decision.capped.items():
        result_counts[f"capped_{label}"] = would - lost
        warnings.append(f"class {label!r} would lose {would} of its {rows} rows ({would / rows:.0%}), more than "
                        f"max-class-drop {config.max_class_drop:g} allows ({lost}): kept the {would - lost} with the "
                        f"weakest evidence, flagged (label_issue) for review")
    return StepResult(kept, drops, result_counts, warnings=warnings)


def decide(suspected: np.ndarray, labels: list[str], unknown: np.ndarray, given_p: np.ndarray, top_p: np.ndarray,
           config: LabelCheckConfig) -> Decision:
    """Which suspected rows are dropped: all of them (drop) or the strongly contradicted (flag), then the cap.

    Pure arithmetic on the probabilities, so that the thresholds can be measured on real data
    without embedding it again. Evidence is stronger the lower p(given label), then the higher
    p(likeliest label); the cap keeps a class's weakest-evidence rows.
    """
    if config.resolved_action == "drop":
        removed = suspected.copy()
    else:
        removed = suspected & (given_p <= config.strong_given) & (top_p >= config.strong_predicted)
    labels_arr = np.array(labels, dtype=object)
    capped = {}
    for label in sorted(set(labels_arr[removed & ~unknown])):
        members = labels_arr == label
        rows, losing = int(members.sum()), np.flatnonzero(removed & members)
        allowed = math.floor(config.max_class_drop * rows + 1e-9)
        if losing.size > allowed:
            strongest_first = sorted(losing, key=lambda k: (given_p[k], -top_p[k], k))
            removed[strongest_first[allowed:]] = False
            capped[str(label)] = (rows, int(losing.size), allowed)
    return Decision(removed=removed, flagged=suspected & ~removed, capped=capped)


def _column(name: str, height: int, rows: np.ndarray, values: np.ndarray, dtype: pl.DataType) -> pl.Series:
    """A full-height column with `values` at `rows` and null elsewhere (rows without a label)."""
    out = np.full(height, None, dtype=object)
    out[rows] = values
    return pl.Series(name, [v.item() if isinstance(v, np.generic) else v for v in out], dtype=dtype)


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

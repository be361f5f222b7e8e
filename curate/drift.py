"""Drift: do today's rows still look like the rows the model was trained on?

A fine-tuned model is tuned to one distribution; new products, new slang or new kinds of
requests move the inputs away from it and the model degrades quietly. `compare` measures
how far CURRENT moved from REFERENCE (a run's training set) and says why, in numbers and
in words:

* input drift on the embeddings of the compared text: a domain classifier (logistic
  regression, stratified k-fold out-of-fold ROC AUC; Evidently's and deepchecks' test) and
  MMD with an RBF kernel (median-heuristic bandwidth; alibi-detect's test), each with a
  permutation p-value (the domain labels shuffled), so that a small set whose AUC is high
  by chance does not cry wolf;
* label drift when both sides have labels: shares side by side, chi-square and
  Jensen-Shannon distance;
* length shift (KS test on word counts) and language shift (py3langid, as `filter`);
* what changed: the terms that separate the two sides (log-odds with an informative
  Dirichlet prior, Monroe, Colaresi & Quinn 2008, "Fightin' Words") and the CURRENT rows
  farthest from any REFERENCE row.

Each check has an effect size threshold and the significance level `alpha`, and finds
drift only when both say so: with thousands of rows a trivial shift is significant, with
twenty rows a large-looking one is noise. The verdict is drift when any check finds it.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import InputError
from curate.step import jsonable
from curate.text import FIELDS, field_text, is_classification

CHECKS = ("classifier", "mmd", "labels", "length", "language")
"""The checks, in the order the verdict lists them."""
REPORT_SUFFIXES = {"json": (".json",), "html": (".html", ".htm")}
_TEXT_WIDTH = 300
_LEAST_SHUFFLES = 20
"""The classifier shuffles at least this often before stopping early, for a p-value worth reading."""


@dataclass
class DriftConfig:
    """What `curate drift` compares and when it calls a difference drift."""

    fields: tuple[str, ...] | None = None
    """The text compared (`curate.text.FIELDS`). None (auto, as dedup): the input text when either side
    holds classification rows (their reply is the label), else the user and assistant turns."""
    max_rows: int = 2000
    """Rows of each side that are compared, drawn at random with `seed` (labels are counted on all rows)."""
    seed: int = 0
    """Seed of the row sample, the folds and the permutations: a rerun gives the same figures."""
    folds: int = 5
    """Stratified cross-validation folds of the domain classifier (fewer when a side has fewer rows)."""
    permutations: int = 100
    """Shuffles of the domain labels behind each permutation p-value, (1 + shuffles at least as extreme)
    / (1 + shuffles): one below `alpha` needs at least 1/alpha of them (100 for 0.01). The classifier
    stops as soon as its p-value can no longer fall below alpha (after 20 shuffles at least), which on
    data without drift is soon; MMD's shuffles cost little."""
    alpha: float = 0.01
    """Significance level of every test: a difference is drift only when its p-value is below this."""
    auc_threshold: float | None = 0.65
    """Least domain-classifier ROC AUC that is drift (0.5: the sides cannot be told apart; Evidently's
    default is 0.55 on larger sets). None: no classifier."""
    mmd: bool = True
    """Run the MMD test (drift when its permutation p-value is below alpha)."""
    label_js_threshold: float | None = 0.1
    """Least Jensen-Shannon distance (base 2, 0 to 1) between the label shares that is drift, with a
    chi-square p-value below alpha. None: no label check."""
    length_ks_threshold: float | None = 0.2
    """Least Kolmogorov-Smirnov statistic between the word counts that is drift, with p below alpha. None: off."""
    language_js_threshold: float | None = 0.1
    """Least Jensen-Shannon distance between the language shares that is drift, with a chi-square p below
    alpha. None: off."""
    top_terms: int = 10
    """Terms listed per side as what separates CURRENT from REFERENCE."""
    examples: int = 5
    """CURRENT rows listed as the farthest from any REFERENCE row."""
    embedder: str | None = None
    """Embedder spec (None: the packaged all-MiniLM-L6-v2)."""

    def __post_init__(self) -> None:
        def positive(name: str, least: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least {least}, got {value!r}")

        positive("max_rows", 2)
        positive("folds", 2)
        positive("permutations", 1)
        positive("top_terms", 0)
        positive("examples", 0)
        if not 0 < self.alpha < 1:
            raise ValueError(f"--alpha must be between 0 and 1, got {self.alpha}")
        for name in ("auc_threshold", "label_js_threshold", "length_ks_threshold", "language_js_threshold"):
            value = getattr(self, name)
            low = 0.5 if name == "auc_threshold" else 0.0
            if value is not None and not low <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [{low}, 1] or off, got {value}")
        if (self.auc_threshold is not None or self.mmd) and not 1 / (self.permutations + 1) < self.alpha:
            raise ValueError(f"--permutations {self.permutations} cannot give a p-value below --alpha {self.alpha}: "
                             f"use at least {int(np.floor(1 / self.alpha))}")
        if self.fields is not None:
            unknown = [f for f in self.fields if f not in FIELDS]
            if unknown or not self.fields:
                raise ValueError(f"--fields: unknown field(s) {unknown}; choose from {', '.join(FIELDS)}, or auto")
            self.fields = tuple(self.fields)


@dataclass
class Side:
    """One side of the comparison: its rows (all of them) and the sample whose text is compared."""

    name: str
    records: pl.DataFrame
    sample: pl.DataFrame
    texts: list[str]
    empty: int
    """Sampled rows left out because their compared text is empty."""


@dataclass
class DriftReport:
    """Every figure (`figures`, what `--json` writes) and the per-row values the plots draw."""

    figures: dict[str, Any]
    series: dict[str, Any] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return self.figures["drift"]

    @property
    def reasons(self) -> list[str]:
        return self.figures["reasons"]


def compare(current: pl.DataFrame, reference: pl.DataFrame, config: DriftConfig | None = None, *,
            names: tuple[str, str] = ("CURRENT", "REFERENCE")) -> DriftReport:
    """How far `current` moved from `reference`, check by check, with the verdict and what changed."""
    config = config or DriftConfig()
    fields = config.fields or (("user",) if is_classification(current) or is_classification(reference)
                               else ("user", "assistant"))
    cur, ref = (_side(df, name, fields, config, salt) for df, name, salt in
                ((current, names[0], 1), (reference, names[1], 2)))
    figures: dict[str, Any] = {
        "drift": False, "reasons": [], "checks": {},
        "current": _describe(cur), "reference": _describe(ref),
        "fields": list(fields), "thresholds": jsonable(config),
    }
    series: dict[str, Any] = {}

    from curate.embeddings import embed

    vectors = embed(cur.texts + ref.texts, model=config.embedder, progress=False)
    cur_vec, ref_vec = vectors[: len(cur.texts)], vectors[len(cur.texts):]

    checks = figures["checks"]
    if config.auc_threshold is not None:
        checks["classifier"], series["classifier"] = _classifier_check(cur_vec, ref_vec, config)
    if config.mmd:
        checks["mmd"] = _mmd_check(cur_vec, ref_vec, config)
    if config.label_js_threshold is not None:
        checks["labels"] = _label_check(cur.records, ref.records, config)
    if config.length_ks_threshold is not None:
        checks["length"], series["length"] = _length_check(cur.texts, ref.texts, config)
    if config.language_js_threshold is not None:
        checks["language"] = _language_check(cur.texts, ref.texts, config)

    figures["nearest_reference"], series["nearest"], order, nearest = _nearest(cur_vec, ref_vec)
    figures["examples"] = _examples(cur, ref, order[: config.examples], nearest, series["nearest"]["current"])
    figures["terms"] = separating_terms(cur.texts, ref.texts, config.top_terms)

    for name in CHECKS:
        check = checks.get(name)
        if check and check["drift"]:
            figures["drift"] = True
            figures["reasons"].append(check["summary"])
    figures["verdict"] = "drift" if figures["drift"] else "no drift"
    return DriftReport(figures, series)


def _side(df: pl.DataFrame, name: str, fields: tuple[str, ...], config: DriftConfig, salt: int) -> Side:
    rng = np.random.default_rng([config.seed, salt])
    sample = df
    if df.height > config.max_rows:
        sample = df[np.sort(rng.choice(df.height, size=config.max_rows, replace=False)).tolist()]
    texts = sample.select(field_text(fields).alias("t"))["t"].fill_null("").to_list()
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        raise InputError(name, f"every compared row has empty text in field(s) {', '.join(fields)}; "
                               "choose others with --fields")
    empty = len(texts) - len(keep)
    if empty:
        sample, texts = sample[keep], [texts[i] for i in keep]
    return Side(name, df, sample, texts, empty)


def _describe(side: Side) -> dict[str, Any]:
    return {"path": side.name, "rows": side.records.height, "compared": len(side.texts), "empty_text": side.empty}


# --- input drift: embeddings ---------------------------------------------------------------------


def _classifier_check(cur: np.ndarray, ref: np.ndarray, config: DriftConfig) -> tuple[dict, dict]:
    """Can a classifier tell the sides apart? Out-of-fold ROC AUC against the same with shuffled sides."""
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    folds = min(config.folds, len(cur), len(ref))
    if folds < 2:
        return _skipped(f"needs at least 2 rows per side, has {len(cur)} and {len(ref)}"), {}
    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(len(ref), dtype=int), np.ones(len(cur), dtype=int)]
    rng = np.random.default_rng([config.seed, 3])
    with threadpool_limits(1):  # small fits: threads only contend on a shared machine
        scores = _out_of_fold(x, y, folds, config.seed)
        auc = float(roc_auc_score(y, scores))
        null, beyond = [], 0
        for _ in range(config.permutations):
            shuffled = rng.permutation(y)
            null.append(float(roc_auc_score(shuffled, _out_of_fold(x, shuffled, folds, config.seed))))
            beyond += null[-1] >= auc
            if len(null) >= _LEAST_SHUFFLES and (beyond + 1) / (config.permutations + 1) > config.alpha:
                break  # the p-value can no longer fall below alpha
    p = (beyond + 1) / (len(null) + 1)
    drift = auc >= config.auc_threshold and p < config.alpha
    check = {
        "drift": drift, "value": auc, "threshold": config.auc_threshold, "p_value": p, "alpha": config.alpha,
        "drift_score": max(0.0, 2 * auc - 1), "folds": folds, "permutations": len(null),
        "null_auc_mean": float(np.mean(null)), "null_auc_sd": float(np.std(null)),
        "summary": "domain classifier on embeddings: " + _against("ROC AUC", auc, config.auc_threshold, "permutation p",
                                                                   p, config.alpha),
    }
    return check, {"reference": scores[y == 0].tolist(), "current": scores[y == 1].tolist()}


def _out_of_fold(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """P(CURRENT) for every row from a logistic regression that did not see it (sides weighted equally)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    scores = np.empty(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return scores


def _mmd_check(cur: np.ndarray, ref: np.ndarray, config: DriftConfig) -> dict:
    """Maximum mean discrepancy (unbiased MMD², RBF kernel) with a permutation p-value."""
    n, m = len(ref), len(cur)
    if n < 2 or m < 2:
        return _skipped(f"needs at least 2 rows per side, has {m} and {n}")
    mmd2, bandwidth, null = mmd_permutation_test(ref, cur, config.permutations, seed=config.seed)
    p = (int(np.sum(null >= mmd2)) + 1) / (len(null) + 1)
    drift = p < config.alpha
    return {
        "drift": drift, "value": mmd2, "threshold": None, "p_value": p, "alpha": config.alpha,
        "bandwidth": bandwidth, "permutations": len(null), "null_mmd2_mean": float(np.mean(null)),
        "summary": f"MMD on embeddings: MMD² {mmd2:.4f} (shuffled: {np.mean(null):.4f}), "
                   + _against(None, mmd2, None, "permutation p", p, config.alpha),
    }


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """(unbiased MMD² of x and y, the RBF bandwidth, MMD² of each shuffle of the pooled rows).

    The kernel is exp(-d² / 2σ²) with σ² the median squared distance between distinct pooled rows
    (the median heuristic). The kernel matrix is computed once; every shuffle is one column of a
    matrix product, so hundreds of them cost about as much as one.
    """
    z = np.vstack([x, y]).astype(np.float64)
    n, total = len(x), len(x) + len(y)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * (z @ z.T), 0)
    off = ~np.eye(total, dtype=bool)
    sigma2 = float(np.median(d2[off])) or 1.0  # all rows equal: any bandwidth, MMD is 0
    kernel = np.exp(-d2 / (2 * sigma2))
    np.fill_diagonal(kernel, 0.0)
    rng = np.random.default_rng([seed, 4])
    assign = np.zeros((total, permutations + 1))
    assign[:n, 0] = 1  # column 0: the real sides; then one shuffle per column
    for k in range(1, permutations + 1):
        assign[rng.permutation(total)[:n], k] = 1
    row_sums = kernel.sum(axis=1)
    within_x = np.einsum("ik,ik->k", assign, kernel @ assign)
    across = assign.T @ row_sums - within_x
    within_y = row_sums.sum() - within_x - 2 * across
    m = total - n
    mmd2 = within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2 * across / (n * m)
    return float(mmd2[0]), float(np.sqrt(sigma2)), mmd2[1:]


# --- labels, lengths, languages ------------------------------------------------------------------


def _label_check(cur: pl.DataFrame, ref: pl.DataFrame, config: DriftConfig) -> dict:
    cur_labels, ref_labels = (df["label"].drop_nulls().cast(pl.String).to_list() for df in (cur, ref))
    if not cur_labels or not ref_labels:
        missing = " and ".join(s for s, labels in (("CURRENT", cur_labels), ("REFERENCE", ref_labels)) if not labels)
        return _skipped(f"{missing} has no labels")
    shares = compare_shares(Counter(cur_labels), Counter(ref_labels))
    new = [k for k in shares["current"] if shares["current"][k] and not shares["reference"][k]]
    gone = [k for k in shares["reference"] if shares["reference"][k] and not shares["current"][k]]
    drift = shares["js_distance"] >= config.label_js_threshold and shares["p_value"] < config.alpha
    moved = max(shares["current"], key=lambda k: abs(shares["current"][k] - shares["reference"][k]))
    return {
        "drift": drift, "value": shares["js_distance"], "threshold": config.label_js_threshold,
        "p_value": shares["p_value"], "alpha": config.alpha, **shares,
        "new_labels": new, "missing_labels": gone,
        "unlabelled": {"current": cur.height - len(cur_labels), "reference": ref.height - len(ref_labels)},
        "summary": ("label mix: " + _against("Jensen-Shannon distance", shares["js_distance"], config.label_js_threshold,
                                             "chi-square p", shares["p_value"], config.alpha)
                    + f"; most moved: {moved} {shares['reference'][moved]:.0%} -> {shares['current'][moved]:.0%}"
                    + (f"; new: {', '.join(new)}" if new else "") + (f"; gone: {', '.join(gone)}" if gone else "")),
    }


def compare_shares(current: Counter, reference: Counter) -> dict[str, Any]:
    """Shares of each category side by side, a chi-square test of the 2 x k counts and the Jensen-Shannon
    distance (base 2: 0 for the same mix, 1 for mixes with nothing in common)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    keys = sorted(set(current) | set(reference), key=lambda k: (-(current[k] + reference[k]), str(k)))
    counts = np.array([[current[k] for k in keys], [reference[k] for k in keys]], dtype=float)
    tested = _pool_sparse(counts)
    if tested.shape[1] > 1:
        chi2, p, dof, _ = chi2_contingency(tested)
    else:
        chi2, p, dof = 0.0, 1.0, 0
    p_cur, p_ref = counts[0] / counts[0].sum(), counts[1] / counts[1].sum()
    return {
        "current": {k: float(v) for k, v in zip(keys, p_cur)},
        "reference": {k: float(v) for k, v in zip(keys, p_ref)},
        "counts": {"current": {k: int(current[k]) for k in keys}, "reference": {k: int(reference[k]) for k in keys}},
        "chi2": float(chi2), "dof": int(dof), "p_value": float(p),
        "js_distance": float(jensenshannon(p_cur, p_ref, base=2)),
    }


def _pool_sparse(counts: np.ndarray, least: float = 5.0) -> np.ndarray:
    """The 2 x k table for the chi-square test, with the categories whose expected count is below `least`
    on either side pooled into one (Cochran's rule): one misidentified language among 20 rows, or a
    label seen once, is no evidence of a shift."""
    expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / counts.sum()
    sparse = expected.min(axis=0) < least
    if sparse.sum() < 2:
        return counts
    return np.column_stack([counts[:, ~sparse], counts[:, sparse].sum(axis=1)])


def word_counts(texts: list[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts])


def _length_check(cur: list[str], ref: list[str], config: DriftConfig) -> tuple[dict, dict]:
    from scipy.stats import ks_2samp

    a, b = word_counts(cur), word_counts(ref)
    result = ks_2samp(a, b)
    ks, p = float(result.statistic), float(result.pvalue)
    drift = ks >= config.length_ks_threshold and p < config.alpha
    check = {
        "drift": drift, "value": ks, "threshold": config.length_ks_threshold, "p_value": p, "alpha": config.alpha,
        "current": {"median": float(np.median(a)), "mean": float(a.mean())},
        "reference": {"median": float(np.median(b)), "mean": float(b.mean())},
        "summary": (f"length: median {np.median(b):g} -> {np.median(a):g} words, "
                    + _against("KS", ks, config.length_ks_threshold, "p", p, config.alpha)),
    }
    return check, {"current": a.tolist(), "reference": b.tolist()}


def _language_check(cur: list[str], ref: list[str], config: DriftConfig) -> dict:
    from curate.rules.language import identify_languages

    shares = compare_shares(Counter(identify_languages(cur)[0]), Counter(identify_languages(ref)[0]))
    drift = shares["js_distance"] >= config.language_js_threshold and shares["p_value"] < config.alpha
    moved = max(shares["current"], key=lambda k: abs(shares["current"][k] - shares["reference"][k]))
    return {
        "drift": drift, "value": shares["js_distance"], "threshold": config.language_js_threshold,
        "p_value": shares["p_value"], "alpha": config.alpha, **shares,
        "summary": ("language: " + _against("Jensen-Shannon distance", shares["js_distance"],
                                            config.language_js_threshold, "chi-square p", shares["p_value"], config.alpha)
                    + f"; most moved: {moved} {shares['reference'][moved]:.0%} -> {shares['current'][moved]:.0%}"),
    }


def _against(name: str | None, value: float, threshold: float | None, test: str, p: float, alpha: float) -> str:
    """"ROC AUC 0.994 >= 0.65, permutation p 0.0099 < 0.01": a figure and a p-value against their thresholds."""
    figure = "" if name is None else f"{name} {value:.3f} {'>=' if value >= threshold else '<'} {threshold}, "
    return figure + f"{test} {p:.3g} {'<' if p < alpha else '>='} {alpha}"


def _skipped(reason: str) -> dict:
    return {"drift": False, "skipped": reason, "summary": f"not run: {reason}"}


# --- what changed --------------------------------------------------------------------------------


def _nearest(cur: np.ndarray, ref: np.ndarray) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Cosine distance from each CURRENT row to its nearest REFERENCE row, next to the same from each
    REFERENCE row to its nearest other one (how far apart REFERENCE's own rows are)."""
    sim = cur @ ref.T
    nearest = sim.argmax(axis=1)
    dist = 1 - sim[np.arange(len(cur)), nearest]
    own = None
    if len(ref) > 1:
        self_sim = ref @ ref.T
        np.fill_diagonal(self_sim, -np.inf)
        own = 1 - self_sim.max(axis=1)
    figures = {"current_mean": float(dist.mean()), "current_median": float(np.median(dist)),
               "reference_mean": float(own.mean()) if own is not None else None,
               "reference_median": float(np.median(own)) if own is not None else None}
    series = {"current": dist.tolist(), "reference": own.tolist() if own is not None else []}
    return figures, series, np.argsort(-dist, kind="stable"), nearest


def _examples(cur: Side, ref: Side, order: np.ndarray, nearest: np.ndarray, dist: list[float]) -> list[dict]:
    rows = []
    for i in order.tolist():
        row, match = cur.sample.row(i, named=True), ref.sample.row(int(nearest[i]), named=True)
        rows.append({"id": row["id"], "text": _short(cur.texts[i]), "label": row.get("label"),
                     "distance": float(dist[i]), "nearest_reference_id": match["id"],
                     "nearest_reference_text": _short(ref.texts[int(nearest[i])])})
    return rows


_WORD = re.compile(r"[^\W\d_]{2,}")


def separating_terms(cur: list[str], ref: list[str], top: int) -> dict[str, list[dict]]:
    """The words whose share of rows differs most between the sides, by the z-score of their log-odds
    ratio with an informative Dirichlet prior (the pooled counts): frequent words must move a lot, rare
    ones are shrunk towards no difference. Each word counts once per row; English stop words are left out."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    def rows_with(texts: list[str]) -> Counter:
        return Counter(w for t in texts for w in set(_WORD.findall(t.lower())) if w not in ENGLISH_STOP_WORDS)

    a, b = rows_with(cur), rows_with(ref)
    words = sorted(set(a) | set(b))
    if not words or top == 0:
        return {"current": [], "reference": []}
    ya, yb = np.array([a[w] for w in words], float), np.array([b[w] for w in words], float)
    prior = ya + yb
    na, nb, a0 = ya.sum(), yb.sum(), prior.sum()
    delta = (np.log((ya + prior) / (na + a0 - ya - prior)) - np.log((yb + prior) / (nb + a0 - yb - prior)))
    z = delta / np.sqrt(1 / (ya + prior) + 1 / (yb + prior))

    def entry(i: int) -> dict:
        return {"term": words[i], "z": float(z[i]), "current_share": ya[i] / len(cur), "reference_share": yb[i] / len(ref)}

    order = np.argsort(-z, kind="stable")
    return {"current": [entry(i) for i in order[:top] if z[i] > 0],
            "reference": [entry(i) for i in order[::-1][:top] if z[i] < 0]}


# --- running it as a command ---------------------------------------------------------------------


def check_report_output(path: Path | None, kind: str, inputs: list[Path]) -> None:
    """Refuse, before any work, a report path with the wrong suffix or one that is an input."""
    if path is None:
        return
    from curate.atomic import check_parents

    if path.suffix.lower() not in REPORT_SUFFIXES[kind]:
        raise InputError(path, f"a {kind.upper()} report must end in {' or '.join(REPORT_SUFFIXES[kind])}")
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name")
    check_parents(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise InputError(path, "is also an input of this command; writing it would destroy the input")


def run_drift(current: Path, reference: Path, config: DriftConfig, *, json_path: Path | None = None,
              html_path: Path | None = None, title: str | None = None,
              parameters: dict[str, Any] | None = None) -> DriftReport:
    """Read both datasets, compare them, write the JSON and HTML reports with a manifest beside each."""
    from curate.manifest import Manifest
    from curate.models import resolve_embedder
    from curate.readers import read_records

    inputs = [current, reference]
    check_report_output(json_path, "json", inputs)
    check_report_output(html_path, "html", inputs)
    if json_path is not None and html_path is not None and json_path.resolve() == html_path.resolve():
        raise InputError(html_path, "is also the --json path; give two names")
    manifest = Manifest("curate drift", parameters={**jsonable(config), **(parameters or {})})
    manifest.models.append(resolve_embedder(config.embedder).describe())
    frames = []
    for path in inputs:
        result = read_records(path)
        manifest.add_input(path, rows=result.rows_in)
        frames.append(result.records)
    report = compare(frames[0], frames[1], config, names=(str(current), str(reference)))
    outputs = write_reports(manifest, report.figures, json_path, html_path,
                            lambda: render_html(report, title or f"Drift: {current.name} against {reference.name}"))
    f = report.figures
    manifest.counts = {"current": f["current"]["rows"], "reference": f["reference"]["rows"],
                       "current_compared": f["current"]["compared"], "reference_compared": f["reference"]["compared"],
                       "drift": int(report.drift), "checks_drifted": len(report.reasons)}
    from curate.step_cli import embedding_counts

    manifest.counts |= embedding_counts()
    for path in outputs:
        manifest.write(path)
    return report


def write_reports(manifest: Any, figures: dict[str, Any], json_path: Path | None, html_path: Path | None,
                  render: Any) -> list[Path]:
    """Write the figures as JSON and `render()`'s page as HTML (each when asked for), atomically, and list
    them as the manifest's outputs (the caller writes the manifest beside each once its counts are in)."""
    from curate.atomic import write_text

    if json_path is not None:
        write_text(json_path, json.dumps(figures, indent=2, ensure_ascii=False, default=json_default) + "\n")
    if html_path is not None:
        write_text(html_path, render())
    outputs = [p for p in (json_path, html_path) if p is not None]
    for path in outputs:
        manifest.add_output(path)
    return outputs


def summary_lines(report: DriftReport, terms: int = 6) -> list[str]:
    """What the console prints: the verdict, the reasons and, for drift, what changed."""
    f = report.figures
    ran = [c for c in f["checks"].values() if "skipped" not in c]
    if not report.drift:
        lines = [f"no drift: {len(ran)} check(s) found none (CURRENT {f['current']['compared']} rows, "
                 f"REFERENCE {f['reference']['compared']} rows compared)"]
        if "classifier" in f["checks"] and "skipped" not in f["checks"]["classifier"]:
            lines.append("  " + f["checks"]["classifier"]["summary"])
    else:
        lines = [f"DRIFT: {len(report.reasons)} of {len(ran)} check(s) found it"]
        lines += [f"  - {reason}" for reason in report.reasons]
        if f["terms"]["current"]:
            lines.append("  terms more common in CURRENT: " + ", ".join(t["term"] for t in f["terms"]["current"][:terms]))
        if f["terms"]["reference"]:
            lines.append("  terms rarer in CURRENT: " + ", ".join(t["term"] for t in f["terms"]["reference"][:terms]))
        if f["examples"]:
            ex = f["examples"][0]
            lines.append(f"  farthest CURRENT row (distance {ex['distance']:.2f}): {_short(ex['text'], 120)}")
    lines += [f"  skipped {name}: {c['skipped']}" for name, c in f["checks"].items() if "skipped" in c]
    return lines


# --- the HTML report -----------------------------------------------------------------------------


def render_html(report: DriftReport, title: str) -> str:
    """A static page: the verdict and every check, the plots (embedded), the terms and the farthest rows."""
    from curate import plots
    from curate.report import img, page, table

    f, s = report.figures, report.series
    verdict = "Drift" if report.drift else "No drift"
    parts = [f"<h2>Verdict: {verdict}</h2>",
             "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in report.reasons) + "</ul>" if report.reasons else "",
             f"<p>CURRENT: {html.escape(f['current']['path'])} ({f['current']['rows']} rows, "
             f"{f['current']['compared']} compared); REFERENCE: {html.escape(f['reference']['path'])} "
             f"({f['reference']['rows']} rows, {f['reference']['compared']} compared); fields: "
             f"{html.escape(', '.join(f['fields']))}.</p>"]
    rows = []
    for name, c in f["checks"].items():
        if "skipped" in c:
            rows.append([name, "skipped", "", "", "", c["skipped"]])
        else:
            rows.append([name, "drift" if c["drift"] else "no drift", _fmt(c.get("value")), _fmt(c.get("threshold")),
                         _fmt(c.get("p_value")), c["summary"]])
    parts.append(table(["check", "result", "value", "threshold", "p-value", "details"], rows)
                 + f"<p>A check finds drift when its value reaches the threshold and its p-value is below "
                   f"alpha = {f['thresholds']['alpha']}.</p>")
    if s.get("classifier"):
        c = f["checks"]["classifier"]
        parts.append("<h2>Domain classifier</h2>"
                     + img(plots.histograms({"REFERENCE": s["classifier"]["reference"],
                                             "CURRENT": s["classifier"]["current"]}, "out-of-fold P(CURRENT)", bins=20),
                           "classifier scores per side")
                     + f"<p>ROC AUC {c['value']:.3f} (shuffled sides: {c['null_auc_mean']:.3f} ± "
                       f"{c['null_auc_sd']:.3f} over {c['permutations']} shuffles).</p>")
    labels = f["checks"].get("labels")
    if labels and "skipped" not in labels:
        keys = list(labels["current"])
        parts.append("<h2>Labels</h2>"
                     + img(plots.bars(keys, {"REFERENCE": [labels["reference"][k] for k in keys],
                                            "CURRENT": [labels["current"][k] for k in keys]}, "label", "share of rows"),
                           "label shares side by side")
                     + table(["label", "REFERENCE", "CURRENT"],
                             [[k, f"{labels['reference'][k]:.1%}", f"{labels['current'][k]:.1%}"] for k in keys]))
    near = f["nearest_reference"]
    series = {"CURRENT to nearest REFERENCE": s["nearest"]["current"]}
    if s["nearest"]["reference"]:
        series["REFERENCE to nearest other REFERENCE"] = s["nearest"]["reference"]
    parts.append("<h2>Distance to the nearest REFERENCE row</h2>"
                 + img(plots.histograms(series, "cosine distance", bins=30), "nearest-reference distances")
                 + f"<p>Mean: CURRENT {near['current_mean']:.3f}"
                 + (f", REFERENCE's own rows {near['reference_mean']:.3f}" if near["reference_mean"] is not None else "")
                 + ".</p>")
    if s.get("length"):
        parts.append("<h2>Lengths</h2>" + img(plots.histograms({"REFERENCE": s["length"]["reference"],
                                                                  "CURRENT": s["length"]["current"]}, "words per row"),
                                               "length histogram"))
    language = f["checks"].get("language")
    if language:
        parts.append("<h2>Languages</h2>" + table(["language", "REFERENCE", "CURRENT"],
                     [[k, f"{language['reference'][k]:.1%}", f"{language['current'][k]:.1%}"] for k in language["current"]]))
    term_rows = [[side, t["term"], f"{t['z']:.1f}", f"{t['reference_share']:.1%}", f"{t['current_share']:.1%}"]
                 for side in ("current", "reference") for t in f["terms"][side]]
    parts.append("<h2>What changed</h2><h3>Separating terms</h3>"
                 + table(["more common in", "term", "z", "REFERENCE rows", "CURRENT rows"],
                         [[r[0].upper(), *r[1:]] for r in term_rows])
                 + "<h3>CURRENT rows farthest from any REFERENCE row</h3>"
                 + table(["distance", "CURRENT row", "label", "nearest REFERENCE row"],
                         [[f"{e['distance']:.3f}", e["text"], e["label"] or "", e["nearest_reference_text"]]
                          for e in f["examples"]]))
    return page(title, "\n".join(p for p in parts if p))


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(text: str, width: int = _TEXT_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")

"""Audit: is this set fit to train on? Balance, coverage, leftovers, bias, and (against real data) fidelity and privacy.

A small set's faults are few rows, so they matter: a label ten times rarer than another, a
persona the teacher never wrote, a duplicate that doubles one example's weight, a word like
"she" that only ever comes with one label. `audit` measures them in one pass, before training,
and raises a *finding* for each that crosses its threshold (`FINDINGS`):

* ``imbalance``: label shares and the imbalance ratio (most common / rarest label count),
  flagged above ``max_imbalance`` (3.0);
* ``coverage``: every synth axis (from `meta.synth.axes`; the task spec's values are the target,
  found through the manifests or given with ``task``) and every ``--slices`` field (a column or
  a `meta` key; target: REAL's shares with ``--against``, else an even spread), flagged when a
  value has less than ``min_coverage`` (0.5) of its target share, and so few rows that the target
  is unlikely (binomial p below ``alpha``: one row short of two expected is chance);
* ``duplicates``: near and exact duplicates left (curate dedup's own code, exact + near at its
  defaults), flagged above ``max_duplicates`` (0.02 of the rows);
* ``label_conflicts``: one text (curate.text's default normalization) with two labels, flagged
  above ``max_label_conflicts`` (0 texts);
* ``association``: identity terms (gender, age, nationality, religion: `curate.identity_terms`,
  the list `train eval`'s counterfactual check swaps; ``--terms FILE`` replaces it) against
  labels by normalized PMI, nPMI(t, l) = log(p(t,l) / p(t)p(l)) / -log p(t,l), in [-1, 1] (the
  HF data-measurements tool's measure): flagged at nPMI >= ``npmi_threshold`` (0.3) with at
  least ``min_term_rows`` (5) rows holding both, and a one-sided Fisher exact p below ``alpha``
  (0.01), with example rows;
* lengths (words) and languages (py3langid) are described, not judged.

With REAL (``--against``), the synthetic rows of DATA (those `synth generate` made; with
``compare`` "auto", all rows when none is marked, a set made by another tool; with "synthetic",
the marked rows only, so that a training set of real rows is not taken for copies of them) are
measured against it, as SDMetrics and NeMo Safe Synthesizer do:

* ``fidelity``: `curate.drift.compare` of synthetic against real (the domain classifier's
  cross-validated ROC AUC on embeddings, label and language Jensen-Shannon distance, length KS,
  each with its permutation or chi-square p-value): fails when any check finds a difference
  (``max_auc`` 0.65, ``max_label_js`` 0.1, ``max_length_ks`` 0.2, ``max_language_js`` 0.1, at ``alpha``);
* ``privacy``: distance to the closest real record (DCR: embedding cosine distance, shared cache
  and default embedder) and n-gram overlap with it (synth/privacy.py's seed-copy measure), next
  to the same for a held-out part of REAL (``holdout`` 0.5, seeded) against the rest: the
  membership-inference proxy. Synthetic rows are measured against the same rest, so "closer to
  the real rows than real data is to itself" is a like-for-like comparison. It fails when
  (a) the share of synthetic rows that copy a real row (cosine similarity >= ``copy_similarity``
  0.95, or n-gram overlap or shingle Jaccard >= ``copy_overlap`` 0.5) exceeds the held-out rows'
  own share by ``max_copy_excess`` (0.02) with a one-sided Fisher p below ``alpha``; or (b) the
  share of synthetic rows closer than the held-out rows' 5th percentile DCR reaches
  ``max_too_close`` (0.15) with a binomial p below ``alpha`` (5% is what the same distribution
  gives); or (c) more than ``max_pii_replay`` (0) PII values (synth/privacy.py's recognizers) in
  synthetic rows also occur in REAL. When REAL is too small for a baseline (fewer than 4 rows
  per part, a task's few seeds), any copy fails it, as the privacy guard would.

The JSON (``--json``) holds, at the top level:

``flagged`` (bool), ``findings`` (list of ``{"finding", "summary"}``, in `FINDINGS` order),
``data`` ({path, rows, synthetic_rows, fields}), ``against`` (same, or null), ``thresholds``
(every setting), ``labels`` ({counts, shares, imbalance_ratio, flag} or null without labels),
``coverage`` ({slices: [{field, kind, target_source, values: [{value, rows, share,
target_share, ratio, p_value, under}], flag}], flag}), ``duplicates`` ({exact, near, rows, share,
examples, flag}), ``label_conflicts`` ({texts, rows, examples, flag}), ``lengths`` ({median,
mean, p5, p95, by_label}), ``languages`` ({shares}), ``associations`` ({terms_source, terms:
[{term, group, label, rows, term_rows, label_rows, npmi, p_value, flag, examples}],
groups: [...], flag}), and with REAL:

``fidelity``: {``verdict`` ("pass" | "fail" | "not run"), ``reasons``, ``compared_rows``,
``checks`` (curate drift's checks by name), ``drift`` (its whole figures)};
``privacy``: {``verdict`` ("pass" | "fail" | "not run"), ``reasons`` (why it failed), ``notes``, ``synthetic_rows``,
``real_rows``, ``holdout_rows``, ``baseline`` (bool), ``dcr`` ({synthetic_median,
holdout_median, ratio, holdout_p5, too_close_share, too_close_p}), ``copies`` ({synthetic
(rows copying any REAL row), synthetic_share_vs_rest, holdout_share, excess, p_value,
examples}), ``ngram`` ({synthetic_median, holdout_median}), ``pii`` ({findings, replayed,
replayed_entities})}.

Without REAL both sections are {"verdict": "not run", "reasons": ["no --against"]}.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import polars as pl

from curate.drift import _fmt, _short
from curate.errors import InputError
from curate.renamed_flags import renamed
from curate.report_options import report_options
from curate.step import jsonable
from curate.text import DEFAULT_NORMALIZATION, field_text, is_classification, match_text

FINDINGS = ("imbalance", "coverage", "duplicates", "label_conflicts", "association", "fidelity", "privacy")
"""What can be flagged, in the order the report lists them."""
COMPARE = ("auto", "synthetic")
"""Which rows of DATA `--against` measures (`AuditConfig.compare`)."""
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
_EXAMPLES = 3
_MIN_BASELINE = 4
"""Fewest rows in each part of REAL (held-out and rest) for the real-vs-real baseline."""
_TOO_CLOSE_QUANTILE = 0.05


@dataclass
class AuditConfig:
    """What `curate audit` measures and when it raises a finding (see the module docstring)."""

    slices: tuple[str, ...] = ()
    """Metadata fields whose coverage is measured: a column (source, a step's column) or a `meta` key."""
    terms: str | Path | None = None
    """Identity-term file (`curate.identity_terms`); None: the default list."""
    task: str | Path | None = None
    """The synth task spec whose axes are the coverage target; None: found through DATA's manifests."""
    fields: tuple[str, ...] | None = None
    """Compared text; None (auto): the input text for classification rows, else user and assistant."""
    compare: str = "auto"
    """Rows measured against REAL: "synthetic" (the marked rows only) or "auto" (those, else every row)."""
    max_imbalance: float = 3.0
    min_coverage: float = 0.5
    max_duplicates: float = 0.02
    max_label_conflicts: int = 0
    npmi_threshold: float = 0.3
    min_term_rows: int = 5
    alpha: float = 0.01
    max_auc: float = 0.65
    max_label_js: float = 0.1
    max_length_ks: float = 0.2
    max_language_js: float = 0.1
    holdout: float = 0.5
    copy_similarity: float = 0.95
    copy_overlap: float = 0.5
    max_copy_excess: float = 0.02
    max_too_close: float = 0.15
    max_pii_replay: int = 0
    max_rows: int = 2000
    """Rows of each side compared for fidelity and privacy (a seeded sample)."""
    seed: int = 0
    embedder: str | None = None

    def __post_init__(self) -> None:
        self.slices = tuple(self.slices)
        for name in ("min_coverage", "max_duplicates", "alpha", "holdout", "copy_similarity", "copy_overlap",
                     "max_copy_excess", "max_too_close", "max_label_js", "max_length_ks", "max_language_js"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value!r}")
        if not 0 < self.holdout < 1 or not 0 < self.alpha < 1:
            raise ValueError("--holdout and --alpha must be strictly between 0 and 1")
        if not 0.5 <= self.max_auc <= 1:
            raise ValueError(f"--max-auc must be in [0.5, 1], got {self.max_auc}")
        if not -1 <= self.npmi_threshold <= 1:
            raise ValueError(f"--npmi-threshold must be in [-1, 1], got {self.npmi_threshold}")
        if self.max_imbalance < 1:
            raise ValueError(f"--max-imbalance must be at least 1, got {self.max_imbalance}")
        for name in ("max_label_conflicts", "min_term_rows", "max_pii_replay"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 or more")
        if self.compare not in COMPARE:
            raise ValueError(f"--compare must be one of {', '.join(COMPARE)}, got {self.compare!r}")
        if self.max_rows < 2:
            raise ValueError(f"--max-rows must be at least 2, got {self.max_rows}")


@dataclass
class AuditReport:
    """Every figure (`figures`, what `--json` writes) and the per-row values the plots draw."""

    figures: dict[str, Any]
    series: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[str]:
        return [f["finding"] for f in self.figures["findings"]]


def audit(data: pl.DataFrame, real: pl.DataFrame | None = None, config: AuditConfig | None = None, *,
          names: tuple[str, str] = ("DATA", "REAL"), tasks: dict[str, Any] | None = None) -> AuditReport:
    """Audit `data` (and its synthetic rows against `real`); `tasks` maps task names to specs (coverage targets)."""
    from curate.review.routing import is_synthetic

    config = config or AuditConfig()
    if data.height == 0:
        raise InputError(names[0], "the dataset is empty: nothing to audit")
    fields = config.fields or (("user",) if is_classification(data) else ("user", "assistant"))
    texts = data.select(field_text(fields).alias("t"))["t"].fill_null("").to_list()
    synthetic = data.select(is_synthetic().alias("s"))["s"].to_list()
    figures: dict[str, Any] = {
        "flagged": False, "findings": [],
        "data": {"path": names[0], "rows": data.height, "synthetic_rows": int(sum(synthetic)), "fields": list(fields)},
        "against": None, "thresholds": jsonable(config),
    }
    series: dict[str, Any] = {}
    found: dict[str, str] = {}
    figures["labels"] = _labels(data, config, found)
    figures["coverage"] = _coverage(data, synthetic, real, config, tasks or {}, found, names)
    figures["duplicates"], figures["label_conflicts"] = _leftovers(data, fields, texts, config, found)
    figures["lengths"], series["lengths"] = _lengths(data, texts)
    figures["languages"] = _languages(texts)
    figures["associations"] = _associations(data, texts, config, found)
    if real is None:
        figures["fidelity"] = {"verdict": NOT_RUN, "reasons": ["no --against"]}
        figures["privacy"] = {"verdict": NOT_RUN, "reasons": ["no --against"]}
    else:
        if real.height == 0:
            raise InputError(names[1], "the dataset is empty: nothing to compare with")
        figures["against"] = {"path": names[1], "rows": real.height}
        if any(synthetic):
            compared = data.filter(pl.Series(synthetic))
        else:  # no marked row: a set another tool made (auto), or real rows only (synthetic)
            compared = data if config.compare == "auto" else None
        if compared is not None:
            fid, priv, series["privacy"] = fidelity_privacy(compared, real, config, fields=fields, names=names)
        else:
            reason = f"no synthetic row in {names[0]} (--compare synthetic)"
            fid, priv = {"verdict": NOT_RUN, "reasons": [reason]}, {"verdict": NOT_RUN, "reasons": [reason]}
        figures["fidelity"], figures["privacy"] = fid, priv
        for name, section in (("fidelity", fid), ("privacy", priv)):
            if section["verdict"] == FAIL:
                found[name] = f"{name}: " + "; ".join(section["reasons"])
    figures["findings"] = [{"finding": name, "summary": found[name]} for name in FINDINGS if name in found]
    figures["flagged"] = bool(found)
    return AuditReport(figures, series)


# --- labels and coverage -------------------------------------------------------------------------


def _labels(data: pl.DataFrame, config: AuditConfig, found: dict) -> dict | None:
    labels = data["label"].drop_nulls()
    if labels.len() == 0:
        return None
    counts = dict(sorted(Counter(labels.to_list()).items(), key=lambda kv: (-kv[1], kv[0])))
    ratio = max(counts.values()) / min(counts.values())
    flag = len(counts) > 1 and ratio > config.max_imbalance
    if flag:
        most, least = next(iter(counts)), list(counts)[-1]
        found["imbalance"] = (f"imbalance: label {most!r} has {counts[most]} rows, {least!r} {counts[least]} "
                              f"(ratio {ratio:.1f} > {config.max_imbalance:g})")
    return {"counts": counts, "shares": {k: v / labels.len() for k, v in counts.items()},
            "unlabelled": data.height - labels.len(), "imbalance_ratio": ratio, "threshold": config.max_imbalance,
            "flag": flag}


def _meta(data: pl.DataFrame) -> list[dict]:
    out = []
    for raw in data["meta"].fill_null("{}").to_list():
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def slice_values(data: pl.DataFrame, name: str, path: str | Path) -> list[str | None]:
    """The value of slice `name` per row: a column, else a key of `meta` (dotted for nested keys)."""
    if name in data.columns and name not in ("messages", "meta"):
        return [None if v is None else str(v) for v in data[name].to_list()]
    key = name.removeprefix("meta.")
    values, seen = [], False
    for meta in _meta(data):
        value: Any = meta
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        seen |= value is not None
        values.append(None if value is None else str(value))
    if not seen:
        columns = [c for c in data.columns if c not in ("messages", "meta")]
        raise InputError(path, f"no row has a column or meta key {name!r} (columns: {', '.join(columns)})", field=name)
    return values


def _coverage(data: pl.DataFrame, synthetic: list[bool], real: pl.DataFrame | None, config: AuditConfig,
              tasks: dict[str, Any], found: dict, names: tuple[str, str]) -> dict:
    slices = []
    metas = _meta(data)
    by_task: dict[str, list[dict]] = {}
    for meta, synth in zip(metas, synthetic):
        info = meta.get("synth") if synth else None
        if isinstance(info, dict):
            by_task.setdefault(str(info.get("task")), []).append(info.get("axes") or {})
    for task_name, axes_rows in sorted(by_task.items()):
        spec = tasks.get(task_name)
        axes = dict(spec.axes) if spec is not None and spec.axes else {}
        for row in axes_rows:
            for axis, value in row.items():
                axes.setdefault(axis, [])
                if str(value) not in axes[axis] and spec is None:
                    axes[axis].append(str(value))
        for axis, values in axes.items():
            observed = [str(r.get(axis)) if r.get(axis) is not None else None for r in axes_rows]
            target = {v: 1 / len(values) for v in values}
            slices.append(_slice(f"{task_name}: {axis}", "synth axis", "task spec" if spec is not None else
                                 "observed values, evenly", observed, target, config))
    for name in config.slices:
        observed = slice_values(data, name, names[0])
        values = sorted({v for v in observed if v is not None})
        target, source = {v: 1 / len(values) for v in values}, "even spread"
        if real is not None:
            try:
                theirs = [v for v in slice_values(real, name, names[1]) if v is not None]
            except InputError:
                theirs = []
            if theirs:
                target = {k: n / len(theirs) for k, n in Counter(theirs).items()}
                source = f"shares in {names[1]}"
        slices.append(_slice(name, "metadata", source, observed, target, config))
    under = [f"{s['field']} = {v['value']!r} ({v['share']:.0%} of rows, target {v['target_share']:.0%})"
             for s in slices for v in s["values"] if v["under"]]
    if under:
        found["coverage"] = f"coverage: {len(under)} value(s) under {config.min_coverage:.0%} of target: " + "; ".join(under[:5])
    return {"slices": slices, "flag": bool(under)}


def _slice(name: str, kind: str, source: str, observed: list[str | None], target: dict[str, float],
           config: AuditConfig) -> dict:
    from scipy.stats import binom

    counts = Counter(v for v in observed if v is not None)
    total = sum(counts.values()) or 1
    keys = list(target) + sorted(k for k in counts if k not in target)
    values = []
    for key in keys:
        rows, want = counts.get(key, 0), target.get(key, 0.0)
        share = rows / total
        p = float(binom.cdf(rows, total, want)) if want else 1.0  # this few rows or fewer, were the target met
        values.append({"value": key, "rows": rows, "share": share, "target_share": want,
                       "ratio": share / want if want else None, "p_value": p,
                       "under": bool(want and share < config.min_coverage * want and p < config.alpha)})
    return {"field": name, "kind": kind, "target_source": source, "rows": total, "values": values,
            "flag": any(v["under"] for v in values)}


# --- duplicates, conflicts, lengths, languages ----------------------------------------------------


def _leftovers(data: pl.DataFrame, fields: tuple[str, ...], texts: list[str], config: AuditConfig,
               found: dict) -> tuple[dict, dict]:
    from curate.dedup.pipeline import DedupConfig, dedup

    nonempty = sum(bool(t.strip()) for t in texts)
    dup = {"exact": 0, "near": 0, "rows": 0, "share": 0.0, "examples": [], "threshold": config.max_duplicates, "flag": False}
    if nonempty >= 2:
        result = dedup(data, DedupConfig(methods=("exact", "near"), fields=fields, label_conflicts="flag"), progress=False)
        drops = result.drops
        by_id = dict(zip(data["id"].to_list(), texts))
        dup["exact"] = int((drops["reason"] == "exact_duplicate").sum())
        dup["near"] = int((drops["reason"] == "near_duplicate").sum())
        dup["rows"] = dup["exact"] + dup["near"]
        dup["share"] = dup["rows"] / data.height
        dup["examples"] = [{"id": d["id"], "text": _short(by_id.get(d["id"], "")), "duplicate_of": d["duplicate_of"],
                            "duplicate_text": _short(by_id.get(d["duplicate_of"], "")), "method": d["reason"].split("_")[0],
                            "similarity": d["similarity"]} for d in drops.head(_EXAMPLES).iter_rows(named=True)]
        dup["flag"] = dup["share"] > config.max_duplicates
        if dup["flag"]:
            found["duplicates"] = (f"duplicates: {dup['rows']} row(s) ({dup['share']:.1%}) duplicate another "
                                   f"({dup['exact']} exact, {dup['near']} near) > {config.max_duplicates:.0%}")
    conflicts = {"texts": 0, "rows": 0, "examples": [], "threshold": config.max_label_conflicts, "flag": False}
    if data["label"].null_count() < data.height:
        keyed = data.with_columns(match_text(fields, DEFAULT_NORMALIZATION).alias("__key"),
                                  pl.Series("__text", texts)).filter(pl.col("__key") != "")
        groups = (keyed.filter(pl.col("label").is_not_null()).group_by("__key", maintain_order=True)
                  .agg(pl.col("label").unique(maintain_order=True).alias("labels"), pl.len().alias("n"),
                       pl.col("__text").first().alias("text"), pl.col("id").alias("ids"))
                  .filter(pl.col("labels").list.len() > 1))
        conflicts["texts"], conflicts["rows"] = groups.height, int(groups["n"].sum()) if groups.height else 0
        conflicts["examples"] = [{"text": _short(g["text"]), "labels": g["labels"], "ids": g["ids"]}
                                 for g in groups.head(_EXAMPLES).iter_rows(named=True)]
        conflicts["flag"] = conflicts["texts"] > config.max_label_conflicts
        if conflicts["flag"]:
            ex = conflicts["examples"][0]
            found["label_conflicts"] = (f"label conflicts: {conflicts['texts']} text(s) carry two or more labels "
                                        f"({conflicts['rows']} rows), e.g. {ex['text'][:60]!r}: {', '.join(ex['labels'])}")
    return dup, conflicts


def _lengths(data: pl.DataFrame, texts: list[str]) -> tuple[dict, dict]:
    from curate.drift import word_counts

    words = word_counts(texts)
    by_label: dict[str, float] = {}
    if data["label"].null_count() < data.height:
        for label in sorted({v for v in data["label"].to_list() if v is not None}):
            mask = (data["label"] == label).fill_null(False).to_numpy()
            by_label[label] = float(np.median(words[mask]))
    figures = {"median": float(np.median(words)), "mean": float(words.mean()), "p5": float(np.percentile(words, 5)),
               "p95": float(np.percentile(words, 95)), "max": int(words.max()), "by_label_median": by_label}
    return figures, {"words": words.tolist()}


def _languages(texts: list[str]) -> dict:
    from curate.rules.language import identify_languages

    kept = [t for t in texts if t.strip()]
    codes = Counter(identify_languages(kept)[0]) if kept else Counter()
    return {"shares": {k: n / len(kept) for k, n in codes.most_common()}, "counts": dict(codes.most_common())}


# --- identity terms ------------------------------------------------------------------------------


def _associations(data: pl.DataFrame, texts: list[str], config: AuditConfig, found: dict) -> dict:
    from scipy.stats import fisher_exact

    from curate.identity_terms import load_terms

    terms = load_terms(config.terms)
    out = {"terms_source": terms.source or "default (curate/identity_terms.py)", "threshold": config.npmi_threshold,
           "min_rows": config.min_term_rows, "alpha": config.alpha, "terms": [], "groups": [], "flag": False}
    labels = data["label"].to_list()
    rows = [i for i, label in enumerate(labels) if label is not None]
    if not rows:
        out["skipped"] = "no row has a label"
        return out
    n = len(rows)
    label_rows = Counter(labels[i] for i in rows)
    has_term: dict[tuple[str, str], set[int]] = {}
    has_group: dict[str, set[int]] = {}
    for i in rows:
        for term, group in terms.find(texts[i]):
            has_term.setdefault((term.lower(), group), set()).add(i)
            has_group.setdefault(group, set()).add(i)

    def measure(holders: set[int], label: str) -> tuple[int, float, float]:
        both = sum(labels[i] == label for i in holders)
        if both == 0:
            return 0, -1.0, 1.0
        p_tl, p_t, p_l = both / n, len(holders) / n, label_rows[label] / n
        npmi = 1.0 if p_tl >= 1 else math.log(p_tl / (p_t * p_l)) / -math.log(p_tl)
        table = [[both, len(holders) - both], [label_rows[label] - both, n - len(holders) - label_rows[label] + both]]
        return both, npmi, float(fisher_exact(table, alternative="greater")[1])

    def entries(key: str, group: str, holders: set[int]) -> list[dict]:
        listed = []
        for label in label_rows:
            both, npmi, p = measure(holders, label)
            if both == 0:
                continue
            flag = npmi >= config.npmi_threshold and both >= config.min_term_rows and p < config.alpha
            entry = {"term": key, "group": group, "label": label, "rows": both, "term_rows": len(holders),
                     "label_rows": label_rows[label], "npmi": npmi, "p_value": p, "flag": flag}
            if flag:
                entry["examples"] = [_short(texts[i]) for i in sorted(holders) if labels[i] == label][:_EXAMPLES]
            listed.append(entry)
        return listed

    for (term, group), holders in sorted(has_term.items()):
        out["terms"] += entries(term, group, holders)
    for group, holders in sorted(has_group.items()):
        out["groups"] += entries(f"any {group} term", group, holders)
    out["terms"].sort(key=lambda e: -e["npmi"])
    flagged = [e for e in out["terms"] if e["flag"]]
    out["flag"] = bool(flagged)
    if flagged:
        found["association"] = "association: " + "; ".join(
            f"{e['term']!r} ({e['group']}) with label {e['label']!r}: nPMI {e['npmi']:.2f} in {e['rows']} of "
            f"{e['term_rows']} rows (p {e['p_value']:.2g})" for e in flagged[:5])
    return out


# --- fidelity and privacy ------------------------------------------------------------------------


def fidelity_privacy(synthetic: pl.DataFrame, real: pl.DataFrame, config: AuditConfig | None = None, *,
                     fields: tuple[str, ...] | None = None, names: tuple[str, str] = ("DATA", "REAL"),
                     pii_scan: bool = True) -> tuple[dict, dict, dict]:
    """(fidelity, privacy, series): `synthetic` rows measured against `real` (see the module docstring)."""
    config = config or AuditConfig()
    fields = fields or (("user",) if is_classification(synthetic) or is_classification(real) else ("user", "assistant"))
    return _fidelity(synthetic, real, config, fields, names), *_privacy(synthetic, real, config, fields, pii_scan)


def _fidelity(synthetic: pl.DataFrame, real: pl.DataFrame, config: AuditConfig, fields: tuple[str, ...],
              names: tuple[str, str]) -> dict:
    from curate.drift import DriftConfig, compare

    if synthetic.height < 2 or real.height < 2:
        return {"verdict": NOT_RUN, "reasons": [f"needs at least 2 rows per side, has {synthetic.height} and {real.height}"],
                "compared_rows": synthetic.height}
    drift = compare(synthetic, real, DriftConfig(
        fields=fields, max_rows=config.max_rows, seed=config.seed, alpha=config.alpha, auc_threshold=config.max_auc,
        mmd=False, label_js_threshold=config.max_label_js if not synthetic["label"].is_null().all() else None,
        length_ks_threshold=config.max_length_ks, language_js_threshold=config.max_language_js, examples=0,
        embedder=config.embedder), names=names).figures
    checks = {name: {k: v for k, v in c.items() if k in ("drift", "value", "threshold", "p_value", "summary", "skipped")}
              for name, c in drift["checks"].items()}
    return {"verdict": FAIL if drift["drift"] else PASS, "reasons": drift["reasons"], "compared_rows": synthetic.height,
            "checks": checks, "drift": drift}


def _sample(df: pl.DataFrame, size: int, seed: int, salt: int) -> pl.DataFrame:
    if df.height <= size:
        return df
    rng = np.random.default_rng([seed, salt])
    return df[np.sort(rng.choice(df.height, size=size, replace=False)).tolist()]


def _privacy(synthetic: pl.DataFrame, real: pl.DataFrame, config: AuditConfig, fields: tuple[str, ...],
             pii_scan: bool) -> tuple[dict, dict]:
    from scipy.stats import binomtest, fisher_exact

    from curate.embeddings import embed
    from synth.privacy import PrivacyConfig, seed_copies

    def texts_of(df: pl.DataFrame) -> list[str]:
        return [t for t in df.select(field_text(fields).alias("t"))["t"].fill_null("").to_list()]

    syn = _sample(synthetic, config.max_rows, config.seed, 11)
    ref = _sample(real, config.max_rows, config.seed, 12)
    s_texts, r_texts = texts_of(syn), texts_of(ref)
    rng = np.random.default_rng([config.seed, 13])
    order = rng.permutation(len(r_texts))
    n_hold = int(round(config.holdout * len(r_texts)))
    hold, rest = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    baseline = len(hold) >= _MIN_BASELINE and len(rest) >= _MIN_BASELINE

    vectors = embed(s_texts + r_texts, model=config.embedder, progress=False)
    sv, rv = vectors[: len(s_texts)], vectors[len(s_texts):]
    sim_all = sv @ rv.T
    nearest = sim_all.argmax(axis=1)
    dcr_all = 1 - sim_all.max(axis=1)
    guard = PrivacyConfig(max_ngram_overlap=config.copy_overlap, max_jaccard=config.copy_overlap)
    over_all = seed_copies(s_texts, r_texts, guard)

    def copy_mask(sims: np.ndarray, matches: list) -> np.ndarray:
        overlap = np.array([max(m.overlap, m.jaccard) for m in matches]) if matches else np.zeros(0)
        return (sims >= config.copy_similarity) | (overlap >= config.copy_overlap)

    copies_all = copy_mask(1 - dcr_all, over_all)
    figures: dict[str, Any] = {"synthetic_rows": len(s_texts), "real_rows": len(r_texts), "holdout_rows": int(len(hold)),
                               "baseline": baseline, "notes": []}
    series: dict[str, Any] = {"synthetic_to_real": dcr_all.tolist()}
    examples = [{"text": _short(s_texts[i]), "real_text": _short(r_texts[int(nearest[i])]),
                 "cosine_similarity": float(1 - dcr_all[i]),
                 "ngram_overlap": float(max(over_all[i].overlap, over_all[i].jaccard))}
                for i in np.argsort(dcr_all, kind="stable")[:_EXAMPLES * 2].tolist() if copies_all[i]][:_EXAMPLES]
    copies = {"synthetic": int(copies_all.sum()), "synthetic_share": float(copies_all.mean()), "examples": examples}
    dcr = {"synthetic_median": float(np.median(dcr_all))}
    ngram = {"synthetic_median": float(np.median([max(m.overlap, m.jaccard) for m in over_all]))}
    fails = []
    if baseline:
        rest_v, hold_v = rv[rest], rv[hold]
        rest_t = [r_texts[i] for i in rest.tolist()]
        s_rest = 1 - (sv @ rest_v.T).max(axis=1)
        h_rest = 1 - (hold_v @ rest_v.T).max(axis=1)
        s_over = seed_copies(s_texts, rest_t, guard)
        h_over = seed_copies([r_texts[i] for i in hold.tolist()], rest_t, guard)
        s_copy, h_copy = copy_mask(1 - s_rest, s_over), copy_mask(1 - h_rest, h_over)
        p5 = float(np.quantile(h_rest, _TOO_CLOSE_QUANTILE))
        too_close = s_rest < p5
        share_close = float(too_close.mean())
        p_close = float(binomtest(int(too_close.sum()), len(too_close), _TOO_CLOSE_QUANTILE, alternative="greater").pvalue)
        dcr.update(synthetic_median_vs_rest=float(np.median(s_rest)), holdout_median=float(np.median(h_rest)),
                   ratio=float(np.median(s_rest) / np.median(h_rest)) if np.median(h_rest) > 0 else None,
                   holdout_p5=p5, too_close_share=share_close, too_close_p=p_close)
        ngram["holdout_median"] = float(np.median([max(m.overlap, m.jaccard) for m in h_over]))
        excess = float(s_copy.mean() - h_copy.mean())
        table = [[int(s_copy.sum()), int((~s_copy).sum())], [int(h_copy.sum()), int((~h_copy).sum())]]
        p_copy = float(fisher_exact(table, alternative="greater")[1])
        copies.update(synthetic_share_vs_rest=float(s_copy.mean()), holdout_share=float(h_copy.mean()), excess=excess,
                      p_value=p_copy)
        if excess >= config.max_copy_excess and p_copy < config.alpha:
            fails.append(f"{s_copy.mean():.0%} of synthetic rows copy a real row, real held-out rows {h_copy.mean():.0%} "
                         f"(excess {excess:.2f} >= {config.max_copy_excess}, Fisher p {p_copy:.2g} < {config.alpha})")
        if share_close >= config.max_too_close and p_close < config.alpha:
            fails.append(f"{share_close:.0%} of synthetic rows are closer to the real rows than 95% of held-out real rows "
                         f"are (>= {config.max_too_close:.0%}, binomial p {p_close:.2g} < {config.alpha})")
        series |= {"synthetic_to_rest": s_rest.tolist(), "holdout_to_rest": h_rest.tolist()}
    else:
        figures["notes"].append(f"REAL has {len(r_texts)} rows: too few for a held-out baseline; any copy fails")
        if copies_all.any():
            fails.append(f"{int(copies_all.sum())} synthetic row(s) copy a real row")
    pii = {"findings": {}, "replayed": 0, "replayed_entities": {}}
    if pii_scan:
        pii = _pii_replay(s_texts, r_texts)
        if pii["replayed"] > config.max_pii_replay:
            fails.append(f"{pii['replayed']} PII value(s) of REAL replayed in synthetic rows "
                         f"({', '.join(pii['replayed_entities'])}) > {config.max_pii_replay}")
    figures |= {"dcr": dcr, "copies": copies, "ngram": ngram, "pii": pii,
                "verdict": FAIL if fails else PASS, "reasons": fails}
    return figures, series


def _pii_replay(synthetic: list[str], real: list[str]) -> dict:
    """PII findings in the synthetic texts (synth/privacy.py's recognizers), and how many of their values occur in REAL."""
    from synth.privacy import scan_text

    def values(text: str) -> list[tuple[str, str]]:
        return [(f.entity, " ".join(text[f.start:f.end].lower().split())) for f in scan_text(text)]

    real_values = {v for t in real for _, v in values(t)}
    found, replayed = Counter(), Counter()
    for text in synthetic:
        for entity, value in values(text):
            found[entity] += 1
            if value in real_values:
                replayed[entity] += 1
    return {"findings": dict(found), "replayed": sum(replayed.values()), "replayed_entities": dict(replayed)}


# --- running it as a command ---------------------------------------------------------------------


def find_tasks(data_path: Path, task: str | Path | None) -> dict[str, Any]:
    """Task specs by name: `task` when given, else every `synth generate` input found through DATA's manifests."""
    from curate.lineage import steps
    from synth.task import load_task

    if task is not None:
        spec = load_task(task)
        return {spec.name: spec}
    specs = {}
    for step in steps(data_path):
        if step.command == "synth generate":
            for path in step.inputs:
                if path.suffix.lower() in (".yaml", ".yml") and path.exists():
                    try:
                        spec = load_task(path)
                    except InputError:
                        continue  # the spec changed since: coverage falls back to the observed values
                    specs[spec.name] = spec
    return specs


def run_audit(data_path: Path, config: AuditConfig, *, against: Path | None = None, json_path: Path | None = None,
              html_path: Path | None = None, title: str | None = None,
              parameters: dict[str, Any] | None = None) -> AuditReport:
    """Read the datasets, audit them, write the JSON and HTML reports with a manifest beside each."""
    from curate.drift import check_report_output, write_reports
    from curate.identity_terms import load_terms
    from curate.manifest import Manifest
    from curate.models import resolve_embedder
    from curate.readers import read_records
    from curate.step_cli import embedding_counts

    inputs = [data_path] + ([against] if against is not None else [])
    check_report_output(json_path, "json", inputs)
    check_report_output(html_path, "html", inputs)
    if json_path is not None and html_path is not None and json_path.resolve() == html_path.resolve():
        raise InputError(html_path, "is also the --json path; give two names")
    load_terms(config.terms)  # a bad term file fails before any work
    manifest = Manifest("curate audit", parameters={**jsonable(config), **(parameters or {})})
    frames = []
    for path in inputs:
        result = read_records(path)
        manifest.add_input(path, rows=result.rows_in)
        frames.append(result.records)
    if config.terms is not None:
        manifest.add_input(config.terms)
    tasks = find_tasks(data_path, config.task)
    if against is not None:
        manifest.models.append(resolve_embedder(config.embedder).describe())
    report = audit(frames[0], frames[1] if against is not None else None, config,
                   names=(str(data_path), str(against)), tasks=tasks)
    outputs = write_reports(manifest, report.figures, json_path, html_path,
                            lambda: render_html(report, title or f"Audit: {data_path.name}"))
    f = report.figures
    manifest.counts = {"rows": f["data"]["rows"], "synthetic_rows": f["data"]["synthetic_rows"],
                       "findings": len(f["findings"]), **{name: 1 for name in report.findings}} | embedding_counts()
    manifest.parameters["verdicts"] = {"fidelity": f["fidelity"]["verdict"], "privacy": f["privacy"]["verdict"]}
    for path in outputs:
        manifest.write(path)
    return report


def summary_lines(report: AuditReport) -> list[str]:
    """What the console prints: the findings, the verdicts and the headline figures."""
    f = report.figures
    lines = [f"{len(f['findings'])} finding(s) in {f['data']['rows']} rows ({f['data']['synthetic_rows']} synthetic)"
             if f["findings"] else f"no finding in {f['data']['rows']} rows ({f['data']['synthetic_rows']} synthetic)"]
    lines += [f"  - {x['summary']}" for x in f["findings"]]
    if f["labels"]:
        lines.append(f"  labels: {len(f['labels']['counts'])}, imbalance ratio {f['labels']['imbalance_ratio']:.1f}")
    for name in ("fidelity", "privacy"):
        lines.append(f"  {name}: {f[name]['verdict']}")
    return lines


# --- the HTML report -----------------------------------------------------------------------------


def render_html(report: AuditReport, title: str) -> str:
    """A static page: the findings, then each section with its plot and tables."""
    from curate import plots
    from curate.report import img, page, table

    f, s = report.figures, report.series
    parts = [f"<h2>Findings: {len(f['findings'])}</h2>",
             "<ul>" + "".join(f"<li>{html.escape(x['summary'])}</li>" for x in f["findings"]) + "</ul>" if f["findings"]
             else "<p>Nothing crosses its threshold.</p>",
             f"<p>DATA: {html.escape(f['data']['path'])} ({f['data']['rows']} rows, {f['data']['synthetic_rows']} "
             f"synthetic); compared text: {html.escape(', '.join(f['data']['fields']))}"
             + (f"; REAL: {html.escape(f['against']['path'])} ({f['against']['rows']} rows)" if f["against"] else "")
             + ".</p>",
             table(["section", "verdict", "why"], [[n, f[n]["verdict"], "; ".join(f[n]["reasons"])]
                                                   for n in ("fidelity", "privacy")])]
    labels = f["labels"]
    if labels:
        keys = list(labels["counts"])
        parts.append(f"<h2>Labels</h2><p>Imbalance ratio {labels['imbalance_ratio']:.2f} (flagged above "
                     f"{labels['threshold']:g}).</p>"
                     + img(plots.bars(keys, {"rows": [labels["counts"][k] for k in keys]}, "label"), "label counts")
                     + table(["label", "rows", "share"], [[k, labels["counts"][k], f"{labels['shares'][k]:.1%}"] for k in keys]))
    for sl in f["coverage"]["slices"]:
        keys = [v["value"] for v in sl["values"]]
        parts.append(f"<h2>Coverage: {html.escape(sl['field'])}</h2><p>{sl['kind']}; target: "
                     f"{html.escape(sl['target_source'])}.</p>"
                     + img(plots.bars(keys, {"achieved": [v["share"] for v in sl["values"]],
                                            "target": [v["target_share"] for v in sl["values"]]}, sl["field"], "share of rows"),
                           f"coverage of {sl['field']}")
                     + table(["value", "rows", "share", "target", "under target"],
                             [[v["value"], v["rows"], f"{v['share']:.1%}", f"{v['target_share']:.1%}",
                               "yes" if v["under"] else ""] for v in sl["values"]]))
    dup, conf = f["duplicates"], f["label_conflicts"]
    parts.append(f"<h2>Duplicates and label conflicts</h2><p>{dup['rows']} row(s) duplicate another ({dup['exact']} exact, "
                 f"{dup['near']} near; {dup['share']:.1%}); {conf['texts']} text(s) carry two or more labels.</p>"
                 + (table(["method", "row", "duplicates"], [[e["method"], e["text"], e["duplicate_text"]]
                                                            for e in dup["examples"]]) if dup["examples"] else "")
                 + (table(["text", "labels"], [[e["text"], ", ".join(e["labels"])] for e in conf["examples"]])
                    if conf["examples"] else ""))
    ln = f["lengths"]
    parts.append("<h2>Lengths and languages</h2>"
                 + img(plots.histograms({"rows": s["lengths"]["words"]}, "words per row"), "length histogram")
                 + f"<p>Median {ln['median']:g} words (5th-95th percentile {ln['p5']:g}-{ln['p95']:g}).</p>"
                 + table(["language", "share"], [[k, f"{v:.1%}"] for k, v in f["languages"]["shares"].items()]))
    assoc = f["associations"]
    rows = [[e["term"], e["group"], e["label"], e["rows"], e["term_rows"], f"{e['npmi']:.2f}", f"{e['p_value']:.2g}",
             "yes" if e["flag"] else "", " | ".join(e.get("examples", []))] for e in assoc["terms"][:25]]
    parts.append(f"<h2>Identity terms and labels</h2><p>Terms: {html.escape(assoc['terms_source'])}. Flagged at nPMI "
                 f"&gt;= {assoc['threshold']} with at least {assoc['min_rows']} rows and Fisher p &lt; {assoc['alpha']}.</p>"
                 + (table(["term", "group", "label", "rows with both", "rows with term", "nPMI", "p", "flagged",
                           "examples"], rows) if rows else f"<p>{html.escape(assoc.get('skipped', 'No identity term found.'))}</p>"))
    fid = f["fidelity"]
    if fid.get("checks"):
        parts.append("<h2>Fidelity: synthetic against real</h2>"
                     + table(["check", "result", "value", "threshold", "p-value", "details"],
                             [[n, "skipped" if "skipped" in c else ("differs" if c["drift"] else "alike"),
                               _fmt(c.get("value")), _fmt(c.get("threshold")), _fmt(c.get("p_value")),
                               c.get("skipped") or c["summary"]] for n, c in fid["checks"].items()]))
    priv = f["privacy"]
    if "dcr" in priv:
        d, c = priv["dcr"], priv["copies"]
        hist = {"synthetic to REAL": s["privacy"]["synthetic_to_real"]}
        if priv["baseline"]:
            hist = {"synthetic to REAL's rest": s["privacy"]["synthetic_to_rest"],
                    "REAL held-out to REAL's rest": s["privacy"]["holdout_to_rest"]}
        parts.append("<h2>Privacy: distance to the closest real record</h2>"
                     + img(plots.histograms(hist, "cosine distance to the closest record", bins=30), "DCR histograms")
                     + table(["figure", "value"], [[k, _fmt(v)] for k, v in {**d, **{f"copies: {k}": v for k, v in c.items()
                                                                                   if k != "examples"}}.items()])
                     + table(["synthetic row", "closest real row", "cosine similarity", "n-gram overlap"],
                             [[e["text"], e["real_text"], f"{e['cosine_similarity']:.3f}", f"{e['ngram_overlap']:.2f}"]
                              for e in c["examples"]])
                     + f"<p>PII in synthetic rows: {html.escape(json.dumps(priv['pii']['findings']))}; replayed from "
                       f"REAL: {priv['pii']['replayed']}.</p>")
    return page(title, "\n".join(p for p in parts if p))


# --- the command ---------------------------------------------------------------------------------


@click.command("audit")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--against", type=click.Path(path_type=Path),
              help="REAL: the real rows (or the seeds) DATA's synthetic rows are measured against: fidelity and privacy.")
@click.option("--slices", "slices", multiple=True, metavar="FIELD",
              help="A column or meta key whose coverage is measured (repeatable); synth axes are always measured.")
@click.option("--terms", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Identity-term file (YAML, group: [[a, b], ...]) instead of the default list.")
@renamed("--task", "--task-spec")
@click.option("--task-spec", "task", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="TASK.yaml",
              help="The synth task spec whose axes are the coverage target. [default: found through DATA's manifests]")
@click.option("--fields", default="auto", show_default=True,
              help="Text compared: comma-separated system/user/assistant/label; auto: user for classification rows, "
                   "else user,assistant.")
@click.option("--compare", type=click.Choice(COMPARE), default="auto", show_default=True,
              help="Rows measured against REAL: synthetic (the rows synth generate made; none: not run) or auto "
                   "(those, else every row: a set another tool made).")
@click.option("--max-imbalance", type=float, default=3.0, show_default=True, help="Largest label count / smallest.")
@click.option("--min-coverage", type=float, default=0.5, show_default=True,
              help="Least share of its target share a slice value must reach.")
@click.option("--max-duplicates", type=float, default=0.02, show_default=True, help="Largest share of duplicate rows.")
@click.option("--max-label-conflicts", type=int, default=0, show_default=True, help="Most texts with two labels.")
@click.option("--npmi-threshold", type=float, default=0.3, show_default=True,
              help="Least nPMI of an identity term with a label that is flagged.")
@click.option("--min-term-rows", type=int, default=5, show_default=True, help="Least rows holding term and label.")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="Significance level of every test.")
@click.option("--max-auc", type=float, default=0.65, show_default=True, help="fidelity: domain-classifier ROC AUC.")
@click.option("--max-label-js", type=float, default=0.1, show_default=True, help="fidelity: label Jensen-Shannon distance.")
@click.option("--max-length-ks", type=float, default=0.2, show_default=True, help="fidelity: KS statistic of word counts.")
@click.option("--max-language-js", type=float, default=0.1, show_default=True, help="fidelity: language JS distance.")
@click.option("--holdout", type=float, default=0.5, show_default=True, help="privacy: share of REAL held out as the baseline.")
@click.option("--copy-similarity", type=float, default=0.95, show_default=True,
              help="privacy: cosine similarity at which a row copies a real one.")
@click.option("--copy-overlap", type=float, default=0.5, show_default=True,
              help="privacy: n-gram overlap or shingle Jaccard at which a row copies a real one.")
@click.option("--max-copy-excess", type=float, default=0.02, show_default=True,
              help="privacy: largest excess of the synthetic copy share over the held-out real rows' own.")
@click.option("--max-too-close", type=float, default=0.15, show_default=True,
              help="privacy: largest share of synthetic rows closer than the held-out rows' 5th percentile DCR.")
@click.option("--max-pii-replay", type=int, default=0, show_default=True, help="privacy: most PII values of REAL replayed.")
@click.option("--max-rows", type=int, default=2000, show_default=True, help="Rows of each side compared (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the samples, the holdout and the folds.")
@report_options('every figure, with a top-level "flagged"')
@click.option("--fail-on", "fail_on", multiple=True, type=click.Choice(FINDINGS), metavar="FINDING",
              help=f"Exit with status 3 when this finding is raised (repeatable): {', '.join(FINDINGS)}.")
@click.option("--strict", is_flag=True, help="Exit with status 3 when any finding is raised.")
def command(data: Path, against: Path | None, slices: tuple[str, ...], fields: str, json_path: Path | None,
            output: Path | None, title: str | None, fail_on: tuple[str, ...], strict: bool, **options) -> None:
    """Audit DATA before training: labels, coverage, leftovers, identity-term bias; with --against, fidelity and privacy.

    Label shares and the imbalance ratio; coverage of every synth axis (target: the task
    spec) and --slices field; duplicates and label conflicts left; lengths and languages;
    identity terms associated with a label (nPMI). With --against REAL, DATA's synthetic
    rows against REAL: a fidelity verdict (domain classifier, label, length and language
    divergence) and a privacy verdict (distance to the closest real record next to a
    held-out part of REAL's, copies, PII replayed). Exit status 3 when a finding named by
    --fail-on (any, with --strict) is raised; bad input 1, usage 2.

    \b
    Examples:
      curate audit train.parquet -o audit.html --json audit.json
      curate audit synth.parquet --against real.parquet --slices source --fail-on privacy --json audit.json
      curate audit train.parquet --terms my_terms.yaml --strict
    """
    from curate.console import console
    from curate.report_options import file_path, show_reports
    from curate.text import parse_fields_or_auto

    try:
        config = AuditConfig(slices=slices, fields=parse_fields_or_auto(fields), **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with console.status(f"auditing {data}"):
        report = run_audit(data, config, against=against, json_path=file_path(json_path), html_path=output, title=title,
                           parameters={"against": against and str(against), "json": json_path and str(json_path),
                                       "output": output and str(output), "fail_on": list(fail_on), "strict": strict})
    for line in summary_lines(report):
        console.print(line, style="bold red" if line.startswith("  - ") else None, highlight=False, markup=False)
    show_reports(json_path, output, report.figures)
    wanted = set(FINDINGS) if strict else set(fail_on)
    if wanted & set(report.findings):
        raise SystemExit(3)

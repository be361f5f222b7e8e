"""The dedup pipeline: exact, near (MinHash LSH) and semantic (embeddings) duplicates, alone or chained.

Each method runs on the rows the previous one kept. Within each duplicate
cluster one row is kept by the keep policy; every other row goes to the drops
table with the row it duplicates, the method and the similarity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import click
import numpy as np
import polars as pl

from curate.dedup.clusters import KEEP_POLICIES, KeepPolicy, cluster, keep_rank
from curate.dedup.near import NearDedupConfig
from curate.dedup.semantic import SemanticDedupConfig
from curate.drops import empty_drops, make_drops
from curate.embeddings import embed
from curate.executor import current
from curate.step import Step, StepResult, embedder_model, embedder_option, normalize_option, option, unit_interval
from curate.text import AUTO, field_text, match_text, parse_fields_or_auto, task_fields

from curate.dedup import METHODS
CLUSTER_SIZE_COLUMN = "dedup_cluster_size"
CONFLICT_COLUMN = "label_conflict"
ROW_COLUMN = "__dedup_row"
LABEL_CONFLICT_POLICIES = ("flag", "drop", "ignore")

DedupResult = StepResult  # the name before the step contract

__all__ = ["Dedup", "DedupConfig", "DedupResult", "METHODS", "NearDedupConfig", "SemanticDedupConfig", "dedup"]


@dataclass
class DedupConfig:
    """What `curate dedup` does."""

    methods: tuple[str, ...] = option(("exact", "near"), "Repeatable; run in the order given. [default: exact, near]",
                                      flag="--method", multiple=True, type=click.Choice(METHODS), show_default=False)
    """Methods, in the order they run. Semantic dedup is opt-in: it loads an embedding model."""
    fields: tuple[str, ...] | None = option(
        None, "What to compare: comma-separated system/user/assistant/label, or auto: the input text for "
        "classification rows (reply = label), else user,assistant.", parse=parse_fields_or_auto, cli_default=AUTO)
    """What is compared; None (auto) chooses by task (`curate.text.task_fields`): the label is never part of
    it by default, so one text with two labels is a label conflict rather than two distinct rows."""
    normalize: tuple[str, ...] = normalize_option()
    """exact and near: how compared text is normalized (`curate.text.NORMALIZATIONS`)."""
    label_conflicts: str = option("flag", "Duplicates whose labels differ: flag (drop the copies as label_conflict, "
                                  "keep the keeper with label_conflict = true), drop (the keeper too), ignore "
                                  "(plain duplicates).", type=click.Choice(LABEL_CONFLICT_POLICIES))
    keep: KeepPolicy = option("first", "Which row of a duplicate cluster survives.", type=click.Choice(KEEP_POLICIES))
    """Which row of a cluster survives: the first seen, the longest, or the highest `score_column`."""
    score_column: str | None = option(None, "Column ranked by --keep score (highest kept).")
    threshold: float = option(0.8, "near: Jaccard similarity of shingle sets.", callback=unit_interval)
    num_perm: int = option(128, "near: MinHash permutations.")
    shingle: str = option("word", "near: word or character n-grams.", type=click.Choice(["word", "char"]))
    ngram: int = option(5, "near: shingle size.")
    semantic_threshold: float = option(0.95, "semantic: cosine similarity.", callback=unit_interval)
    embedder: str | None = embedder_option("semantic: embedding model spec (default: packaged all-MiniLM-L6-v2).")
    batch_size: int = 64
    """semantic: texts per embedding batch."""
    near: NearDedupConfig = field(init=False)
    """The near method's settings, from threshold, num_perm, shingle and ngram."""
    semantic: SemanticDedupConfig = field(init=False)
    """The semantic method's settings, from semantic_threshold, embedder and batch_size."""

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown dedup method(s) {unknown or list(self.methods)}; choose from {', '.join(METHODS)}")
        if self.label_conflicts not in LABEL_CONFLICT_POLICIES:
            raise ValueError(f"unknown label conflict policy '{self.label_conflicts}'; choose from {', '.join(LABEL_CONFLICT_POLICIES)}")
        if self.keep not in KEEP_POLICIES:
            raise ValueError(f"unknown keep policy '{self.keep}'; choose from {', '.join(KEEP_POLICIES)}")
        self.near = NearDedupConfig(threshold=self.threshold, num_perm=self.num_perm, shingle=self.shingle, ngram=self.ngram)
        self.semantic = SemanticDedupConfig(threshold=self.semantic_threshold, model=self.embedder, batch_size=self.batch_size)


class Dedup(Step):
    """Remove exact, near (MinHash LSH) and semantic (embedding) duplicates.

    Writes the kept rows to OUTPUT and, for every dropped row, the row it duplicates,
    the method and the similarity to OUTPUT's .drops.parquet.

    \b
    Example:
      curate dedup raw.parquet --method exact --method near --threshold 0.8 -o deduped.parquet
    """

    name = "dedup"
    Config = DedupConfig

    def models(self) -> list[dict]:
        return embedder_model(self.config.embedder) if "semantic" in self.config.methods else []

    def run(self, records: pl.DataFrame) -> StepResult:
        result = dedup(records, self.config)
        # drops by method are the manifest's dropped_<method>_duplicate; flagged conflicts are not drops
        result.counts = {k: v for k, v in result.counts.items() if k == "label_conflict_flagged"}
        return result


def dedup(df: pl.DataFrame, config: DedupConfig | None = None, *, progress: bool = True) -> StepResult:
    """Remove duplicates; `kept` gains a `dedup_cluster_size` column (1 + rows it stands for), and
    `label_conflict` when labelled duplicates disagree and the policy is flag."""
    config = config or DedupConfig()
    if df.height == 0:
        raise ValueError("the dataset is empty: nothing to dedup")
    config = dataclasses.replace(config, fields=config.fields or task_fields(df))
    current = df.with_columns(pl.lit(1, dtype=pl.Int64).alias(CLUSTER_SIZE_COLUMN)) if CLUSTER_SIZE_COLUMN not in df.columns else df
    # Rows with nothing to compare are no one's duplicate (not even of each other): they pass through, in place,
    # for `filter` to judge (its empty_response and length rules).
    empty = df.select(field_text(config.fields).str.len_chars() == 0).to_series()
    messages = []
    if empty.any():
        if empty.all():
            raise ValueError(f"no row has text in fields {', '.join(config.fields)}: nothing to compare")
        shown = ", ".join(f"row {i + 1} (id {df['id'][i]})" for i in empty.arg_true()[:5].to_list())
        messages.append(f"{int(empty.sum())} row(s) have no text in fields {', '.join(config.fields)} and were not "
                        f"compared: {shown}")
        current = current.with_row_index(ROW_COLUMN)
        passed, current = current.filter(empty), current.filter(~empty)
    conflicts = config.label_conflicts != "ignore" and "label" in df.columns and df["label"].null_count() < df.height
    if conflicts and config.label_conflicts == "flag" and CONFLICT_COLUMN not in current.columns:
        current = current.with_columns(pl.lit(False).alias(CONFLICT_COLUMN))
    all_drops, counts = [empty_drops()], {}
    for method in config.methods:
        pairs, similarity = _PAIR_FINDERS[method](current, config, progress)
        found = cluster(current.height, pairs, keep_rank(current, config.keep, config.score_column))
        dropped = found.dropped
        keepers = found.keeper[dropped]
        counts[method] = len(dropped)
        if len(dropped) == 0:
            continue
        ids = current["id"]
        sims = similarity(dropped, keepers)
        sizes = found.sizes()[dropped]
        reasons = [f"{method}_duplicate"] * len(dropped)
        details = [f"{method} duplicate (cluster of {s}), kept row {int(k)}" for s, k in zip(sizes, keepers)]
        disputed = np.zeros(current.height, dtype=bool)  # keepers whose cluster holds another label
        if conflicts:
            labels = current["label"]
            own, kept_label = labels.gather(dropped), labels.gather(keepers)
            differ = (own != kept_label).fill_null(False).to_numpy()
            for n in np.flatnonzero(differ):
                reasons[n] = "label_conflict"
                details[n] = (f"{method} duplicate of kept row {int(keepers[n])} with another label: "
                              f"{own[int(n)]!r} here, {kept_label[int(n)]!r} there")
            disputed[keepers[differ]] = True
        drops = make_drops(id=ids.gather(dropped), step="dedup", reason=pl.Series(reasons, dtype=pl.String),
                           duplicate_of=ids.gather(keepers), similarity=pl.Series(sims, dtype=pl.Float64), detail=details)
        all_drops.append(drops)
        # The keeper now stands for everything its cluster held.
        stood_for = np.bincount(keepers, weights=current[CLUSTER_SIZE_COLUMN].to_numpy()[dropped], minlength=current.height)
        keep_mask = np.ones(current.height, dtype=bool)
        keep_mask[dropped] = False
        current = current.with_columns(
            (pl.col(CLUSTER_SIZE_COLUMN) + pl.Series(stood_for.astype(np.int64))).alias(CLUSTER_SIZE_COLUMN))
        if disputed.any() and config.label_conflicts == "drop":
            rows = np.flatnonzero(disputed)
            all_drops.append(make_drops(
                id=ids.gather(rows), step="dedup", reason="label_conflict",
                detail=[f"its {method} duplicates carry other labels (kept label {current['label'][int(r)]!r}); "
                        "none is trusted" for r in rows]))
            keep_mask[rows] = False
        elif disputed.any():
            current = current.with_columns((pl.col(CONFLICT_COLUMN) | pl.Series(disputed)).alias(CONFLICT_COLUMN))
        current = current.filter(pl.Series(keep_mask))
    if messages:  # the uncompared rows back in their places
        current = pl.concat([current, passed], how="diagonal_relaxed").sort(ROW_COLUMN).drop(ROW_COLUMN)
        if CONFLICT_COLUMN in current.columns:
            current = current.with_columns(pl.col(CONFLICT_COLUMN).fill_null(False))
    result = StepResult(current, pl.concat(all_drops), counts, parameters={"fields_used": list(config.fields)},
                        messages=messages)
    if conflicts and config.label_conflicts == "flag":
        flagged = int(current[CONFLICT_COLUMN].sum())
        result.counts["label_conflict_flagged"] = flagged
        result.note = f"; flagged: {flagged} (label_conflict)" if flagged else ""
    return result


def _texts(df: pl.DataFrame, config: DedupConfig) -> pl.Series:
    return df.select(match_text(config.fields, config.normalize)).to_series()


def _exact(df: pl.DataFrame, config: DedupConfig, progress: bool):
    return current().exact_pairs(_texts(df, config)), lambda a, b: np.ones(len(a))


def _near(df: pl.DataFrame, config: DedupConfig, progress: bool):
    texts = _texts(df, config).to_list()
    pairs, jaccard = current().near_pairs(texts, config.near)
    n = np.int64(len(texts))
    codes = pairs[:, 0] * n + pairs[:, 1]  # sorted, as every executor returns the pairs: 8 bytes a pair, not a dict entry

    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from curate.dedup.near import shingle_jaccard

        wanted = np.minimum(a, b) * n + np.maximum(a, b)
        at = np.minimum(np.searchsorted(codes, wanted), max(len(codes) - 1, 0))
        found = (codes[at] == wanted) if len(codes) else np.zeros(len(wanted), dtype=bool)
        # A row may join its keeper through a chain; then measure it against the keeper directly.
        return np.array([
            jaccard[k] if hit else shingle_jaccard(texts[i], texts[j], config.near)
            for i, j, k, hit in zip(a.tolist(), b.tolist(), at.tolist(), found.tolist())
        ], dtype=np.float64)

    return pairs, similarity


def _semantic(df: pl.DataFrame, config: DedupConfig, progress: bool):
    texts = df.select(field_text(config.fields)).to_series().to_list()
    vectors = embed(texts, config.semantic.model, config.semantic.batch_size, progress=progress)
    pairs, _ = current().semantic_pairs(vectors, config.semantic)
    return pairs, lambda a, b: np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float64)


_PAIR_FINDERS = {"exact": _exact, "near": _near, "semantic": _semantic}

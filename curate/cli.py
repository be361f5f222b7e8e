"""The `curate` command: bring raw examples into the record model, and (later) dedup, filter, select."""

from __future__ import annotations

from pathlib import Path

import click
import polars as pl
from rich.markup import escape

from curate import __version__
from curate.atomic import sidecar
from curate.console import SmallsetGroup, console
from curate.dedup import METHODS
from curate.dedup.clusters import KEEP_POLICIES
from curate.drops import write_drops
from curate.errors import InputError
from curate.explain import explain as explain_row
from curate.label_check import ACTIONS as LABEL_CHECK_ACTIONS, METHODS as LABEL_CHECK_METHODS, LabelCheckConfig
from curate.layouts import LAYOUTS, Mapping
from curate.manifest import Manifest
from curate.models import resolve_embedder, resolve_llm
from curate.readers import read_records
from curate.select import STRATIFY_MODES, SelectConfig, embedding_fields, read_knee, select as run_select
from curate.text import DEFAULT_FIELDS, FIELDS, parse_fields
from curate.writers import write_records, write_rejects


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
def main() -> None:
    """Curate small, high-quality datasets for fine-tuning.

    Every command reads a dataset and writes a new one, plus a manifest beside it
    (OUTPUT's name with .manifest.json) that records inputs, parameters, versions,
    counts and wall time.
    """


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output file: .parquet or .jsonl.")
@click.option("--layout", type=click.Choice(list(LAYOUTS)), help="Input layout; detected from the column names when omitted.")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN", help="Which input column plays a layout field (repeatable), e.g. --map prompt=question.")
@click.option("--source", help="Value of the `source` column (default: each input's file name).")
@click.option("--split", help="Split to read from a saved DatasetDict folder (default: train).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at the first bad row and write nothing. skip: write the good rows and OUTPUT.rejects.jsonl.")
def ingest(inputs: tuple[Path, ...], output: Path, layout: str | None, pairs: tuple[str, ...],
           source: str | None, split: str | None, on_error: str) -> None:
    """Read raw examples (JSONL, JSON, CSV, TSV, Parquet, a saved datasets folder) into records.

    Known layouts: chat `messages`; ShareGPT `conversations`; `prompt`/`completion`;
    Alpaca `instruction`/`input`/`output`; `text` + `label`. Unmapped columns go to `meta`.

    \b
    Example:
      curate ingest tickets.csv --map text=body --map label=category -o tickets.parquet
    """
    mapping = Mapping.parse(layout, pairs)
    manifest = Manifest("curate ingest", parameters={"layout": layout, "map": list(pairs), "source": source,
                                                     "split": split, "on_error": on_error})
    tables, rejects = [], []
    for path in inputs:
        with console.status(f"reading {path}"):
            result = read_records(path, mapping, source=source, on_error=on_error, split=split)
        manifest.add_input(path, rows=result.rows_in, rejected=len(result.rejects))
        tables.append(result.records)
        rejects += result.rejects
    records = pl.concat(tables, how="diagonal_relaxed") if len(tables) > 1 else tables[0]
    write_records(records, output)
    manifest.add_output(output, rows=records.height)
    rejects_path = sidecar(output, "rejects.jsonl")
    if rejects:
        write_rejects(rejects, rejects_path)
        manifest.add_output(rejects_path, rows=len(rejects))
    else:
        rejects_path.unlink(missing_ok=True)  # an older run's rejects would mislead
    manifest.counts = {"in": sum(i["rows"] for i in manifest.inputs), "out": records.height, "rejected": len(rejects)}
    manifest.write(output)
    console.print(f"[green]wrote[/] {records.height} records to {output}"
                  + (f", [yellow]{len(rejects)} rejected[/] (see {rejects_path})" if rejects else ""))


def _load(path: Path, manifest: Manifest) -> pl.DataFrame:
    """Read a step's input (any readable format) and record it in the manifest."""
    result = read_records(path)
    manifest.add_input(path, rows=result.rows_in)
    return result.records


def _save(manifest: Manifest, output: Path, kept: pl.DataFrame, drops: pl.DataFrame, rows_in: int,
          extra_counts: dict[str, int] | None = None, note: str = "") -> None:
    """Write kept rows, the drops table and the manifest (its counts plus `extra_counts`); then say what happened,
    by reason, and `note` (what the step did besides dropping)."""
    write_records(kept, output)
    manifest.add_output(output, rows=kept.height)
    drops_file = write_drops(drops, output)
    manifest.add_output(drops_file, rows=drops.height)
    by_reason = dict(drops.group_by("reason").len().sort("len", descending=True).iter_rows()) if drops.height else {}
    manifest.counts = {"in": rows_in, "out": kept.height, "dropped": drops.height,
                       **{f"dropped_{k}": v for k, v in by_reason.items()}, **(extra_counts or {}), **_embedding_counts()}
    manifest.write(output)
    summary = ", ".join(f"{v} {k}" for k, v in by_reason.items()) or "none"
    console.print(f"[green]kept[/] {kept.height} of {rows_in} rows -> {output}; dropped: {summary}{note} (see {drops_file.name})")


def _embedding_counts() -> dict[str, int]:
    """What the shared embedding cache answered during this command (nothing when it embedded nothing)."""
    import sys

    embeddings = sys.modules.get("curate.embeddings")  # loaded only by steps that embed
    stats = getattr(embeddings, "last_stats", None)
    if stats is None or not stats.texts:
        return {}
    return {"embedded_texts": stats.texts, "embedding_cache_hits": stats.hits, "embedding_cache_misses": stats.misses}


def _run_step(manifest: Manifest, input: Path, output: Path, step) -> None:
    """Load INPUT, run `step(records)` (a result with kept and drops), save; a ValueError names INPUT."""
    records = _load(input, manifest)
    try:
        result = step(records)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    _save(manifest, output, result.kept, result.drops, records.height)


def _unit_interval(name: str):
    def check(ctx, param, value):
        if value is not None and not 0 < value <= 1:
            raise click.BadParameter(f"{value} is outside (0, 1]", param_hint=name)
        return value
    return check


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Kept rows: .parquet or .jsonl.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS), help="Repeatable; run in the order given. [default: exact, near]")
@click.option("--fields", default=",".join(DEFAULT_FIELDS), show_default=True, help=f"What to compare: comma-separated {'/'.join(FIELDS)}.")
@click.option("--keep", type=click.Choice(KEEP_POLICIES), default="first", show_default=True, help="Which row of a duplicate cluster survives.")
@click.option("--score-column", help="Column ranked by --keep score (highest kept).")
@click.option("--threshold", type=float, default=0.8, show_default=True, callback=_unit_interval("--threshold"), help="near: Jaccard similarity of shingle sets.")
@click.option("--num-perm", type=int, default=128, show_default=True, help="near: MinHash permutations.")
@click.option("--shingle", type=click.Choice(["word", "char"]), default="word", show_default=True, help="near: word or character n-grams.")
@click.option("--ngram", type=int, default=5, show_default=True, help="near: shingle size.")
@click.option("--semantic-threshold", type=float, default=0.95, show_default=True, callback=_unit_interval("--semantic-threshold"), help="semantic: cosine similarity.")
@click.option("--embedder", help="semantic: embedding model spec (default: packaged all-MiniLM-L6-v2).")
def dedup(input: Path, output: Path, methods: tuple[str, ...], fields: str, keep: str, score_column: str | None,
          threshold: float, num_perm: int, shingle: str, ngram: int, semantic_threshold: float, embedder: str | None) -> None:
    """Remove exact, near (MinHash LSH) and semantic (embedding) duplicates.

    Writes the kept rows to OUTPUT and, for every dropped row, the row it duplicates,
    the method and the similarity to OUTPUT's .drops.parquet.

    \b
    Example:
      curate dedup raw.parquet --method exact --method near --threshold 0.8 -o deduped.parquet
    """
    from curate.dedup.pipeline import DedupConfig, NearDedupConfig, SemanticDedupConfig, dedup as run_dedup

    try:
        config = DedupConfig(
            methods=methods or ("exact", "near"), fields=parse_fields(fields), keep=keep, score_column=score_column,
            near=NearDedupConfig(threshold=threshold, num_perm=num_perm, shingle=shingle, ngram=ngram),
            semantic=SemanticDedupConfig(threshold=semantic_threshold, model=embedder),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    manifest = Manifest("curate dedup", parameters={"methods": list(config.methods), "fields": list(config.fields),
                                                    "keep": keep, "score_column": score_column, "threshold": threshold,
                                                    "num_perm": num_perm, "shingle": shingle, "ngram": ngram,
                                                    "semantic_threshold": semantic_threshold, "embedder": embedder})
    records = _load(input, manifest)
    if "semantic" in config.methods:
        manifest.models.append(resolve_embedder(embedder).describe())
    try:
        result = run_dedup(records, config)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    _save(manifest, output, result.kept, result.drops, records.height)


def _split_pair(value: str, option: str) -> tuple[str, str]:
    """NAME=VALUE -> (NAME, VALUE), both stripped and non-empty."""
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise click.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint=option)
    return name.strip(), rest.strip()


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@main.command(name="filter")
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Kept rows: .parquet or .jsonl.")
@click.option("--min-tokens", type=int, default=2, show_default=True, help="Fewest tokens (all turns, the student model's tokenizer); 0 turns it off.")
@click.option("--max-tokens", type=int, default=2048, show_default=True, help="Most tokens; 0 turns it off. The chat template adds a few per turn.")
@click.option("--tokenizer", help="Model whose tokenizer counts tokens (default: the student LLM, env SMALLSET_LLM).")
@click.option("--max-repeated-ngram-ratio", type=float, default=0.3, show_default=True, help="Most share of repeated word n-grams in the assistant text; 1 turns it off.")
@click.option("--repeated-ngram", type=int, default=3, show_default=True, help="n of those word n-grams.")
@click.option("--max-non-alnum-ratio", type=float, default=0.5, show_default=True, help="Most share of characters that are not letters, digits or spaces; 1 turns it off.")
@click.option("--languages", help="Comma-separated ISO 639-1 codes to keep, e.g. en,fr (py3langid, offline). [default: any]")
@click.option("--min-language-confidence", type=float, default=0.5, show_default=True, help="Least probability of the identified language.")
@click.option("--allowed-labels", help="Comma-separated labels to keep; unlabelled rows are dropped too. [default: any]")
@click.option("--min-score", "min_scores", multiple=True, metavar="COLUMN=MIN", help="Drop rows with COLUMN below MIN or missing (repeatable), e.g. judge_score=3.")
@click.option("--rule", "rules", multiple=True, metavar="NAME=EXPR", help="Keep rows where this polars SQL expression is true (repeatable), e.g. \"short=len(label) < 20\".")
@click.option("--rule-callable", "rule_callables", multiple=True, metavar="NAME=MODULE:FUNCTION", help="Keep rows where FUNCTION(dataframe) is True (repeatable).")
@click.option("--empty-response/--no-empty-response", default=True, show_default=True, help="Drop rows with an empty assistant turn.")
@click.option("--truncated/--no-truncated", default=True, show_default=True, help="Drop answers that look cut off (open fence or bracket, trailing , ; : and the).")
@click.option("--role-order/--no-role-order", default=True, show_default=True, help="Drop rows whose turns are not [system,] user, assistant, ... ending with assistant.")
@click.option("--placeholders/--no-placeholders", default=True, show_default=True, help="Drop rows with leftover template placeholders ({{var}}, [Your Name], <NAME>...).")
def filter_command(input: Path, output: Path, min_tokens: int, max_tokens: int, tokenizer: str | None,
                   max_repeated_ngram_ratio: float, repeated_ngram: int, max_non_alnum_ratio: float,
                   languages: str | None, min_language_confidence: float, allowed_labels: str | None,
                   min_scores: tuple[str, ...], rules: tuple[str, ...], rule_callables: tuple[str, ...],
                   empty_response: bool, truncated: bool, role_order: bool, placeholders: bool) -> None:
    """Drop rows that fail heuristic quality rules; each drop keeps its reason and measured value.

    Rules run in a fixed order, cheapest first; a row is dropped for the first it fails:
    role order, empty response, label, scores, placeholders, truncation, symbols,
    repetition, your rules, then tokens and language. Kept rows gain filter_tokens
    (and filter_language with --languages).

    \b
    Example:
      curate filter deduped.parquet --max-tokens 1024 --languages en --min-score judge_score=3 \\
        --rule "has_label=label IS NOT NULL" -o filtered.parquet
    """
    from curate.filters import FilterConfig, UserRule, filter_records

    try:
        scores = {}
        for pair in min_scores:
            column, minimum = _split_pair(pair, "--min-score")
            try:
                scores[column] = float(minimum)
            except ValueError:
                raise click.BadParameter(f"{minimum!r} is not a number", param_hint="--min-score") from None
        user_rules = [UserRule(name, expr=expr) for name, expr in (_split_pair(r, "--rule") for r in rules)]
        user_rules += [UserRule(name, callable=fn) for name, fn in (_split_pair(r, "--rule-callable") for r in rule_callables)]
        config = FilterConfig(
            min_tokens=min_tokens or None, max_tokens=max_tokens or None, tokenizer=tokenizer,
            max_repeated_ngram_ratio=None if max_repeated_ngram_ratio == 1 else max_repeated_ngram_ratio,
            repeated_ngram=repeated_ngram,
            max_non_alnum_ratio=None if max_non_alnum_ratio == 1 else max_non_alnum_ratio,
            languages=_csv(languages), min_language_confidence=min_language_confidence,
            check_empty_response=empty_response, check_truncated=truncated, check_role_order=role_order,
            allowed_labels=_csv(allowed_labels), check_placeholders=placeholders,
            min_scores=scores, rules=user_rules,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    manifest = Manifest("curate filter", parameters={
        "min_tokens": config.min_tokens, "max_tokens": config.max_tokens, "tokenizer": tokenizer,
        "max_repeated_ngram_ratio": config.max_repeated_ngram_ratio, "repeated_ngram": repeated_ngram,
        "max_non_alnum_ratio": config.max_non_alnum_ratio,
        "languages": list(config.languages) if config.languages else None,
        "min_language_confidence": min_language_confidence,
        "allowed_labels": list(config.allowed_labels) if config.allowed_labels else None,
        "min_scores": scores, "rules": [{"name": r.name, "expr": r.expr, "callable": r.callable} for r in user_rules],
        "check_empty_response": empty_response, "check_truncated": truncated,
        "check_role_order": role_order, "check_placeholders": placeholders,
        "reason_order": config.reason_codes(),
    })
    records = _load(input, manifest)
    if config.counts_tokens:
        manifest.models.append(resolve_llm(tokenizer).describe())
    try:
        with console.status("filtering"):
            result = filter_records(records, config)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    _save(manifest, output, result.kept, result.drops, records.height)


class MaxDf(click.ParamType):
    """Rows, a share of rows, or none (a click type, so recipes are checked against it before a run)."""

    name = "ROWS|SHARE|none"

    def convert(self, value, param, ctx):
        from curate.decontaminate import parse_max_df

        try:
            return parse_max_df(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("--against", "against", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Evaluation or held-out set (any readable format); repeatable.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Clean rows: .parquet or .jsonl.")
@click.option("--ngram", type=int, default=8, show_default=True, help="Word n-gram length for the overlap check.")
@click.option("--max-overlap", type=float, default=0.5, show_default=True, callback=_unit_interval("--max-overlap"),
              help="Drop a row when this share of its n-grams (weighted by --weighting) occurs in the evaluation set.")
@click.option("--weighting", type=click.Choice(["idf", "none"]), default="idf", show_default=True,
              help="idf: stock phrases (see --max-df) are left out of both checks and every other n-gram weighs its "
                   "rarity in the training plus evaluation rows; none: every n-gram of the whole text counts once.")
@click.option("--max-df", type=MaxDf(), default="10", show_default=True,
              help="With idf: n-grams in more than this many rows (a share of all rows when below 1, e.g. 0.05) "
                   "are stock phrases (greetings, signatures); none: no stock phrases, idf weights alone.")
@click.option("--threshold", type=float, default=0.8, show_default=True, callback=_unit_interval("--threshold"),
              help="MinHash check: Jaccard similarity with any evaluation row.")
@click.option("--no-minhash", is_flag=True, help="Only the n-gram check.")
@click.option("--fields", default=",".join(DEFAULT_FIELDS), show_default=True, help=f"What to compare: comma-separated {'/'.join(FIELDS)}.")
def decontaminate(input: Path, against: tuple[Path, ...], output: Path, ngram: int, max_overlap: float, weighting: str,
                  max_df: float | None, threshold: float, no_minhash: bool, fields: str) -> None:
    """Drop training rows that overlap an evaluation or held-out set.

    Each drop says how many evaluation rows it is close to; the manifest counts
    eval_rows_matched, the evaluation rows some dropped row is close to.

    \b
    Example:
      curate decontaminate train.parquet --against test.jsonl -o train.clean.parquet
    """
    from curate.decontaminate import DecontaminationConfig, decontaminate as run_decontaminate
    from curate.dedup.near import NearDedupConfig

    try:
        config = DecontaminationConfig(ngram=ngram, max_ngram_overlap=max_overlap, weighting=weighting, max_df=max_df,
                                       fields=parse_fields(fields),
                                       near=None if no_minhash else NearDedupConfig(threshold=threshold))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    manifest = Manifest("curate decontaminate", parameters={"against": [str(p) for p in against], "ngram": ngram,
                                                            "max_overlap": max_overlap, "weighting": weighting,
                                                            "max_df": max_df, "threshold": threshold,
                                                            "minhash": not no_minhash, "fields": list(config.fields)})
    records = _load(input, manifest)
    evaluation = pl.concat([_load(path, manifest) for path in against], how="diagonal_relaxed")
    try:
        result = run_decontaminate(records, evaluation, config)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    matched = result.counts["eval_rows_matched"]
    _save(manifest, output, result.kept, result.drops, records.height, extra_counts={"eval_rows_matched": matched})
    console.print(f"{result.drops.height} training rows dropped, close to {matched} of {evaluation.height} evaluation rows")


@main.command(name="check-labels")
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Kept rows: .parquet or .jsonl.")
@click.option("--trusted", metavar="CONDITION",
              help="Polars SQL condition for rows whose labels are true, e.g. \"source = 'tickets'\": "
                   "the check learns from them and checks only other rows. [default: none, all rows out-of-fold]")
@click.option("--method", type=click.Choice(LABEL_CHECK_METHODS), default=LABEL_CHECK_METHODS[0], show_default=True,
              help="cleanlab filter_by: how contradicted a label must be to be suspected; "
                   "predicted_neq_given is the strictest.")
@click.option("--min-quality", type=float, callback=_unit_interval("--min-quality"),
              help="Also suspect checked rows whose own label's predicted probability is below this (off-task rows).")
@click.option("--action", type=click.Choice(LABEL_CHECK_ACTIONS), default="auto", show_default=True,
              help="drop: drop every suspected row. flag: keep them with label_issue and label_suggested, drop only "
                   "strong contradictions. auto: drop with --trusted, flag without.")
@click.option("--strong-given", type=click.FloatRange(0, 1), default=LabelCheckConfig.strong_given, show_default=True,
              help="flag: drop a suspected row only if its own label's probability is at most this...")
@click.option("--strong-predicted", type=click.FloatRange(0, 1), default=LabelCheckConfig.strong_predicted, show_default=True,
              help="...and the likeliest label's at least this.")
@click.option("--max-class-drop", type=click.FloatRange(0, 1), default=LabelCheckConfig.max_class_drop, show_default=True,
              help="Never remove more than this share of one class; the rest of its suspects are kept flagged, "
                   "with a warning. 1: no cap.")
@click.option("--fields", default="system,user", show_default=True, help="Text the label is predicted from.")
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds for out-of-fold probabilities.")
@click.option("--embedder", help="Embedding model spec (default: packaged all-MiniLM-L6-v2).")
def check_labels(input: Path, output: Path, trusted: str | None, method: str, min_quality: float | None, action: str,
                 strong_given: float, strong_predicted: float, max_class_drop: float, fields: str,
                 folds: int, embedder: str | None) -> None:
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
    from rich.markup import escape

    from curate.label_check import check_labels as run_check_labels

    try:
        config = LabelCheckConfig(trusted=trusted, method=method, min_quality=min_quality, action=action,
                                  strong_given=strong_given, strong_predicted=strong_predicted,
                                  max_class_drop=max_class_drop, fields=parse_fields(fields), folds=folds,
                                  embedder=embedder)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    manifest = Manifest("curate check-labels", parameters={
        "trusted": trusted, "method": method, "min_quality": min_quality, "action": action,
        "action_taken": config.resolved_action, "strong_given": strong_given, "strong_predicted": strong_predicted,
        "max_class_drop": max_class_drop, "fields": list(config.fields), "folds": folds, "embedder": embedder})
    manifest.models.append(resolve_embedder(embedder).describe())
    records = _load(input, manifest)
    try:
        result = run_check_labels(records, config)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    for line in result.warnings:
        console.print(f"[bold red]warning:[/] [yellow]check-labels capped a class: {escape(line)}[/]", highlight=False)
    extra = {k: v for k, v in result.counts.items() if k == "flagged" or k.startswith("capped_")}
    capped = sum(v for k, v in extra.items() if k.startswith("capped_"))
    note = f"; flagged: {result.counts['flagged']} (label_issue)" + (f", {capped} of them kept by the cap" if capped else "")
    _save(manifest, output, result.kept, result.drops, records.height, extra_counts=extra, note=note)


class SelectSize(click.ParamType):
    """A number of rows or `auto` (a click type, so recipes are checked against it before a run)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif str(value).strip().lower() == "auto":
            return "auto"
        else:
            try:
                size = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is neither a number of rows nor 'auto'", param, ctx)
        if size < 1:
            self.fail(f"selection size must be at least 1, got {size}", param, ctx)
        return size


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Selected rows: .parquet or .jsonl.")
@click.option("--size", "-n", required=True, type=SelectSize(), metavar="N|auto",
              help="Rows to select (fewer when fewer qualify), or auto: the knee of --curve, else every row "
                   "up to --auto-max.")
@click.option("--score-column", help="Quality score to favour (higher is better), e.g. a judge score.")
@click.option("--quality-weight", type=float, default=0.5, show_default=True, help="1: by score alone; 0: by diversity alone.")
@click.option("--stratify", type=click.Choice(list(STRATIFY_MODES)), default="auto", show_default=True,
              help="With labels: keep the label mix (capped by --max-class-share), balance it, ignore labels, or auto: "
                   "balance for macro_f1 or a balanced --test, else keep.")
@click.option("--metric", help="The objective's metric (accuracy, macro_f1, ...): macro_f1 makes auto balance the labels, "
                   "any other keeps their mix.")
@click.option("--test", "test", type=click.Path(path_type=Path),
              help="The held-out test set (any readable dataset); auto balances labels when its labels are balanced.")
@click.option("--max-class-share", type=float, default=0.5, show_default=True, callback=_unit_interval("--max-class-share"),
              help="keep: no label above this share of the selection (1: no cap); the excess goes to the other labels.")
@click.option("--curve", type=click.Path(path_type=Path), help="size auto: a learning curve from `train curve`; its knee is the size.")
@click.option("--auto-max", type=click.IntRange(min=1), default=1000, show_default=True,
              help="size auto without --curve: every row when there are at most this many, else this many.")
@click.option("--fields", default="auto", show_default=True,
              help="Text embedded for diversity: comma-separated system/user/assistant/label, or auto (the prompt "
                   "turns for classification rows, as check-labels embeds them; else user,assistant,label).")
@click.option("--embedder", help="Embedding model spec (default: packaged all-MiniLM-L6-v2).")
def select(input: Path, output: Path, size: int | str, score_column: str | None, quality_weight: float, stratify: str,
           metric: str | None, test: Path | None, max_class_share: float, curve: Path | None, auto_max: int,
           fields: str, embedder: str | None) -> None:
    """Pick a diverse, high-quality subset of SIZE rows, stratified the way the objective asks.

    Rows come out in selection order (column select_rank); the rest go to the
    drops table with reason not_selected and their distance to the selection.
    The label mix and the size chosen, and why, are printed and go to the manifest
    (stratify_mode, stratify_reason, size_chosen, size_reason).

    \b
    Example:
      curate select deduped.parquet --size auto --metric accuracy --test test.jsonl -o selected.parquet
      curate select scored.parquet --size 500 --score-column judge_score -o selected.parquet
    """
    manifest = Manifest("curate select", parameters={
        "size": size, "score_column": score_column, "quality_weight": quality_weight, "stratify": stratify,
        "metric": metric, "test": str(test) if test else None, "max_class_share": max_class_share,
        "curve": str(curve) if curve else None, "auto_max": auto_max, "fields": fields, "embedder": embedder})
    try:
        config = SelectConfig(size=size, score_column=score_column, quality_weight=quality_weight, stratify=stratify,
                              metric=metric, max_class_share=None if max_class_share == 1 else max_class_share,
                              auto_max=auto_max, fields=None if fields == "auto" else parse_fields(fields),
                              embedder=embedder)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    manifest.models.append(resolve_embedder(embedder).describe())
    records = _load(input, manifest)  # first: manifests name the step's data as their first input
    if test is not None:
        labels = _load(test, manifest)["label"].drop_nulls()
        config.test_labels = dict(labels.value_counts().iter_rows()) if labels.len() else None
    if curve is not None and size == "auto":
        config.knee = read_knee(curve)
        manifest.add_input(curve)
    try:
        result = run_select(records, config)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    manifest.parameters.update(fields=list(config.fields or embedding_fields(records)),
                               stratify_mode=result.mode, stratify_reason=result.reason,
                               size_chosen=result.kept.height, size_reason=result.size_reason)
    console.print(f"stratify: [bold]{result.mode}[/] - {escape(result.reason)}", highlight=False, soft_wrap=True)
    console.print(f"size: [bold]{result.kept.height}[/] - {escape(result.size_reason)}", highlight=False, soft_wrap=True)
    _save(manifest, output, result.kept, result.drops, records.height)


@main.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Scored rows: .parquet or .jsonl.")
@click.option("--judge", "use_judge", is_flag=True, required=True, help="Score with the local LLM judge (the only scorer so far).")
@click.option("--rubric", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML mapping of criterion name to question (default: correctness, helpfulness, format; each 1-5).")
@click.option("--labels", help="Comma-separated allowed labels: the judge also labels each row and says if it agrees.")
@click.option("--model", help="Judge model spec (default: packaged SmolLM2-135M-Instruct).")
@click.option("--batch-size", type=int, default=32, show_default=True)
def score(input: Path, output: Path, use_judge: bool, rubric: Path | None, labels: str | None, model: str | None,
          batch_size: int) -> None:
    """Score every row with an LLM judge from a rubric; scores become columns.

    Adds judge_<criterion> (1-5), judge_score (their mean) and judge_rationale; with
    --labels also judge_label and judge_agrees. Threshold them with `curate filter`.

    \b
    Example:
      curate score synth.parquet --judge --labels billing,technical,account,shipping -o scored.parquet
    """
    import yaml

    from curate.judge import JudgeConfig, judge
    from curate.llm import EngineConfig, LLMEngine

    try:
        config = JudgeConfig(rubric=yaml.safe_load(rubric.read_text()) if rubric else JudgeConfig().rubric,
                             labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None,
                             batch_size=batch_size)
    except (ValueError, AttributeError) as exc:
        raise click.BadParameter(str(exc)) from None
    manifest = Manifest("curate score", parameters={"judge": True, "rubric": config.rubric, "labels": config.labels,
                                                    "batch_size": batch_size})
    records = _load(input, manifest)
    with console.status("starting the vLLM engine (about 30 s on CPU)"):
        engine = LLMEngine(EngineConfig(model=model))
    manifest.models.append(engine.model.describe())
    with engine:
        scored = judge(records, engine, config)
    write_records(scored, output)
    manifest.add_output(output, rows=scored.height)
    manifest.counts = {"in": records.height, "out": scored.height,
                       "unscored": int(scored["judge_score"].null_count())}
    manifest.parameters["usage"] = engine.usage
    manifest.write(output)
    mean = scored["judge_score"].mean()
    console.print(f"[green]scored[/] {scored.height} rows -> {output}; mean judge_score {mean:.2f}"
                  + (f", judge agrees with {scored['judge_agrees'].mean():.0%} of labels" if config.labels else ""))


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="HTML file to write.")
@click.option("--title", help="Page title.")
def report(dataset: Path, output: Path, title: str | None) -> None:
    """Write a static HTML report of how DATASET was curated.

    The funnel, drops by reason with examples, labels and lengths before and after,
    score distributions and the largest duplicate clusters, with plots embedded.

    \b
    Example:
      curate report selected.parquet -o report.html
    """
    from curate.report import write_report

    with console.status("building the report"):
        write_report(dataset, output, title)
    console.print(f"[green]wrote[/] {output}")


@main.command()
@click.argument("row_id", metavar="ID")
@click.argument("dataset", type=click.Path(path_type=Path))
def explain(row_id: str, dataset: Path) -> None:
    """Tell one row's story: every step that touched it, its scores, and why it was kept or dropped.

    DATASET is the last output of a chain of curate commands; the manifests beside
    each output lead back to the raw files. ID may be a unique prefix.

    \b
    Example:
      curate explain 3fa9c1 runs/demo/selected.parquet
    """
    from rich.table import Table

    story = explain_row(row_id, dataset)
    record = story.record
    console.rule(f"row {story.id}")
    for turn in record.get("messages") or []:
        console.print(f"[bold]{turn['role']}[/]: {_short(turn['content'])}")
    if record.get("label") is not None:
        console.print(f"[bold]label[/]: {record['label']}")
    console.print(f"[bold]source[/]: {record.get('source')}")
    table = Table("step", "output", "outcome", "reason", "duplicate of", "similarity", "detail")
    for o in story.outcomes:
        d = o.drop or {}
        sim = d.get("similarity")
        table.add_row(o.command, Path(o.output).name, o.outcome, d.get("reason") or "", (d.get("duplicate_of") or "")[:12],
                      f"{sim:.3f}" if sim is not None else "", d.get("detail") or "")
    console.print(table)
    if story.stage_values:
        console.print("[bold]scores and flags[/]: " + ", ".join(f"{k}={v}" for k, v in story.stage_values.items()))
    if story.duplicate_of:
        dup = story.duplicate_of
        text = " / ".join(_short(t["content"], 80) for t in dup.get("messages") or [])
        console.print(f"[bold]duplicates[/] {dup['id']}: {text}")
    console.print(f"[bold]final[/]: {story.final}")


def _short(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@main.command()
@click.option("--llm", help="LLM spec: 'default', a local folder or a hub id (env SMALLSET_LLM).")
@click.option("--embedder", help="Embedding model spec (env SMALLSET_EMBEDDER).")
def models(llm: str | None, embedder: str | None) -> None:
    """Resolve the models every stage uses; converts the default LLM on first use."""
    with console.status("resolving models (the first run converts the default LLM, about 30 s)"):
        resolved = [resolve_llm(llm), resolve_embedder(embedder)]
    for model in resolved:
        click.echo(f"{model.role}\t{model.path}\t{model.source}")


from curate.review.cli import review as review_group  # noqa: E402 (standard library only at import)

main.add_command(review_group, "review")


if __name__ == "__main__":
    main()

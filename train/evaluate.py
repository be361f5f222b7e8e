"""`train eval`: the adapter against the base model zero-shot and the base model's k-shot prompt.

One vLLM engine with LoRA enabled answers every test row three times: the base model
on the plain prompt, the base model on a k-shot prompt built from training rows (the
prompting baseline), and the adapter on the plain prompt. Further adapters of the same
base (`compare`: a learning curve's sizes, an ablation's variants) are answered by the
same engine, so all of them meet one base and one k-shot baseline on the same rows.

The k-shot rows come from one declared pool (`shots_from`); without one, from the
adapter's own training split. Every metric carries a percentile bootstrap interval
over the test rows, and every adapter's difference from the main adapter (and the
main adapter's from k-shot) a paired one (`train.bootstrap`). Test rows with a
near-copy in the adapter's training data (n-gram or MinHash overlap, measured as
`curate decontaminate` does) are counted and warned about, not only exact copies.

Decoding is greedy; for classification every contender's answer is constrained to the
label set by vLLM's guided choice (or, with `constrain=False`, parsed from free
generation the same way for all), so no contender loses points to formatting the
others are spared.

Prompts are laid out as the training records are (`train.prompts`) and rendered by the
base model's chat template; every prompt vLLM tokenized is compared with the tokens
`train lora` would have produced for it, and a mismatch is reported.

vLLM starts worker processes by spawn: call `evaluate` only under `if __name__ == "__main__":`
or from a CLI entry point.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.atomic import atomic_path, write_text
from curate.console import console
from curate.errors import InputError
from curate.layouts import Mapping
from curate.manifest import Manifest, content_hash, manifest_path
from curate.models import ResolvedModel, resolve_llm
from train import metrics as M
from curate.identity_terms import TermSet, load_terms
from train.adapter_base import base_spec
from train.cost import DEFAULT_LATENCY_ROWS, measure_latency
from train.counterfactual import Swap, swaps
from train.errors import TrainError
from train.merge import adapter_folder
from train.objective import Objective
from train.prompts import (
    Example, default_k, detect_task, gold, kshot_prompt, overlap, pick_shots, shared_system, to_examples, with_system,
)

if TYPE_CHECKING:
    from curate.engine_cli import EngineChoice

BASELINES = ("base", "kshot")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's max_lora_rank accepts
JUDGE_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}, "required": ["winner"]}


@dataclass
class EvalConfig:
    """Every knob of `train eval`; the CLI flags map onto these fields."""

    model: str | None = None
    """Base model; None = the one the adapter records. Another base is an error."""
    k: int | None = None
    """Shots in the k-shot prompt; None = one per label (at most 8) for classification, 3 otherwise."""
    task: str = "auto"
    """classification, exact, free, or auto (classification when every reply is the row's label,
    exact when replies are five words or fewer, else free text)."""
    labels: list[str] | None = None
    """Classification label set; None = the labels of the training rows."""
    constrain: bool = True
    """Classification: constrain answers to the label set (guided choice); False parses free answers."""
    system: str | None = None
    """System message for every prompt; None = the one every training row shares, if any."""
    max_tokens: int | None = None
    """New tokens per answer; None = by task (labels: room for the longest label, exact 64, free 256)."""
    max_model_len: int = 2048
    seed: int = 0
    """Chooses the k-shot examples."""
    judge: bool = False
    """Free text: also the base model as judge, k-shot and adapter answers against base answers (win rate)."""
    metric: str | None = None
    target: str | None = None
    """The objective, e.g. metric 'accuracy' and target '+30' (points over k-shot) or '0.8'."""
    slice_by: list[str] = field(default_factory=list)
    """Fields to score every contender per slice of (`train.slices`): source, label, length, a meta key, a synth axis."""
    counterfactual: bool = True
    """Classification: ask again with identity terms swapped and count changed answers (`train.counterfactual`)."""
    terms: str | None = None
    """The identity-term file for the counterfactual check; None = `curate.identity_terms`' default set."""
    latency_rows: int = DEFAULT_LATENCY_ROWS
    """Test rows each contender answers one request at a time, timed (`train.cost`); 0 = batch timing only."""

    def objective(self) -> Objective | None:
        if (self.metric is None) != (self.target is None):
            raise TrainError("give both --metric and --target for a verdict, or neither")
        return Objective.parse(self.metric, self.target) if self.metric else None


@dataclass
class EvalResult:
    output_dir: Path
    eval_json: Path
    predictions: Path
    confusion_png: Path | None
    report: dict[str, Any] = field(default_factory=dict)
    slices_png: Path | None = None


@dataclass
class Plan:
    """Everything decided before the engine starts (so that bad input fails fast)."""

    adapter_dir: Path
    rank: int
    resolved: ResolvedModel
    task: str
    labels: list[str]
    test: list[Example]
    shots: list[Example]
    system: str | None
    train_source: str
    overlap: int
    conversations: dict[str, list[list[dict]]]
    max_tokens: int
    adapters: dict[str, Path] = field(default_factory=dict)
    """Every adapter answered, by contender name: "adapter" first, then the compared ones."""
    near_copies: list[str] = field(default_factory=list)
    """Ids of test rows with a near-copy (n-gram or MinHash) in the main adapter's training data."""
    slices: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    """--slice-by field -> (each test row's slice, the slices in order)."""
    swaps: list[Swap] = field(default_factory=list)
    """Test rows with identity terms, swapped, for the counterfactual check."""
    swapped_conversations: dict[str, list[list[dict]]] = field(default_factory=dict)
    terms: TermSet | None = None
    """The identity terms swapped; None when there is no counterfactual check."""

    @property
    def contenders(self) -> list[str]:
        return list(self.conversations)


def evaluate(adapter: str | Path, test: str | Path | dict[str, str | Path], output_dir: str | Path | None = None,
             config: EvalConfig | None = None, *, shots_from: str | Path | None = None, mapping: Mapping | None = None,
             progress: bool = True, compare: dict[str, str | Path] | None = None,
             engine_choice: EngineChoice | None = None) -> EvalResult:
    """Score base zero-shot, base k-shot and the adapter on `test`; write eval.json, predictions, plots, manifest.

    `test` is one file, or several by name ({"2026-06": old, "2026-12": new}): every contender answers
    each; the first is the one the verdict is about, the others join an "over time" table.
    `compare` names further adapters of the same base model, answered by the same engine. `engine_choice` picks
    another engine with LoRA (`--engine ray`: replicas on Ray); the default is one in-process vLLM engine.
    """
    from curate.engine_cli import EngineChoice
    from curate.llm import SamplingConfig

    config = config or EvalConfig()
    objective = config.objective()
    tests = test_sets(test)
    first, test = next(iter(tests.items()))
    manifest = Manifest(command="train eval", parameters={**asdict(config), "compare": {k: str(v) for k, v in (compare or {}).items()}})
    plan = make_plan(adapter, test, config, shots_from, mapping, manifest, compare=compare)
    later = {name: make_plan(adapter, path, config, shots_from, mapping, Manifest(command="train eval"), compare=compare,
                             main=False) for name, path in list(tests.items())[1:]}
    for path in list(tests.values())[1:]:
        manifest.add_input(path)
    if objective is not None:
        objective.check_metric(available_metrics(plan.task, config.judge))
    if config.latency_rows < 0:
        raise TrainError(f"--latency-rows must be 0 or more, got {config.latency_rows}")
    output_dir = Path(output_dir) if output_dir else plan.adapter_dir.parent / "eval"
    for name, each in {first: plan, **later}.items():
        where = "" if not later else f" of {name}"
        if each.overlap:
            console.print(f"[yellow]warning:[/] {each.overlap} test rows{where} also occur in the training data: the test set is not held out")
        if len(each.near_copies) > each.overlap:
            console.print(f"[yellow]warning:[/] {len(each.near_copies)} of {len(each.test)} test rows{where} have a near-copy in the "
                          "training data (n-gram or MinHash overlap, as `curate decontaminate` measures): their scores "
                          "flatter the adapter; decontaminate the training set against the test set")

    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=plan.max_tokens, seed=0)
    choices = plan.labels if plan.task == M.CLASSIFICATION and config.constrain else None
    loras = {name: (name, k, str(folder)) for k, (name, folder) in enumerate(plan.adapters.items(), start=1)}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    engine_choice = engine_choice or EngineChoice("vllm")
    with engine_choice.open(model=str(plan.resolved.path), max_model_len=config.max_model_len, enable_lora=True,
                            max_lora_rank=plan.rank) as engine:
        manifest.parameters["engine"] = engine_choice.describe(engine)
        seconds["engine_start"] = _lap(clock)

        def answer(each: Plan, conversations: dict[str, list], what: str) -> tuple[dict[str, list], dict[str, float]]:
            generations, taken = {}, {}
            for name in each.contenders:
                console.print(f"answering {len(conversations[name])} {what}: {name}")
                clock = time.perf_counter()
                generations[name] = engine.chat(conversations[name], greedy, choices=choices, lora=loras.get(name),
                                                progress=progress)
                taken[name] = _lap(clock)
            return generations, taken

        generations, taken = answer(plan, plan.conversations, "test rows")
        seconds.update(taken)
        clock = time.perf_counter()
        judged = judge_against_base(engine, plan, generations) if config.judge and plan.task == M.FREE else {}
        if judged:
            seconds["judge"] = _lap(clock)
        usage = dict(engine.usage)
        answered = {first: (generations, taken, judged)}
        for name, each in later.items():
            gens, taken = answer(each, each.conversations, f"test rows of {name}")
            judged_later = judge_against_base(engine, each, gens) if config.judge and each.task == M.FREE else {}
            answered[name] = (gens, taken, judged_later)
        swapped = {}
        for name, each in {first: plan, **later}.items():
            if each.swaps:
                swapped[name], _ = answer(each, each.swapped_conversations, "rows with identity terms swapped")
        clock = time.perf_counter()
        latency = measure_latency(engine, plan.conversations, greedy, choices, loras, config.latency_rows)
        if config.latency_rows:
            seconds["latency"] = _lap(clock)
        usage_total = dict(engine.usage)

    primary = objective.metric if objective else available_metrics(plan.task, False)[0]
    sections, tables, flips = {}, {}, {}
    for name, each in {first: plan, **later}.items():
        gens, taken, judged_here = answered[name]
        tables[name], flips[name], sections[name] = score_test_set(each, gens, judged_here, taken, swapped.get(name),
                                                      latency if name == first else {}, primary)
    predictions, section = tables[first], sections[first]
    mismatched = sum(rendering_mismatches(each, answered[name][0]) for name, each in {first: plan, **later}.items())
    if mismatched:
        console.print(f"[yellow]warning:[/] {mismatched} prompts were tokenized differently from training's rendering")
    results, intervals, differences = section["results"], section["intervals"], section["differences"]
    verdict = objective.verdict(results) if objective else None
    if verdict is not None:
        verdict["interval"] = intervals["adapter"].get(objective.metric)
        reference = objective.target.reference
        if reference is not None:
            verdict["margin_interval"] = differences.get(f"adapter-{reference}", {}).get(objective.metric)
        if "text" in section["cost"]:
            verdict["cost"] = section["cost"]["text"]

    report = {
        "adapter": str(plan.adapter_dir), "model": str(plan.resolved.path), "test": str(test), "task": plan.task,
        "rows": len(plan.test), "labels": plan.labels if plan.task == M.CLASSIFICATION else None,
        "answers": answer_mode(plan.task, config.constrain), "decoding": "greedy", "max_tokens": plan.max_tokens,
        "k": len(plan.shots), "shots": [s.id for s in plan.shots], "shots_from": plan.train_source,
        "system": plan.system, "test_rows_in_training": plan.overlap,
        "test_rows_near_training": len(plan.near_copies), "near_copy_ids": plan.near_copies,
        "rendering_mismatches": mismatched, "adapters": {k: str(v) for k, v in plan.adapters.items()},
        "results": results, "intervals": intervals, "differences": differences,
        "objective": verdict, "usage": usage, "seconds": seconds,
        **{key: section[key] for key in ("slices", "counterfactual", "cost") if key in section},
        "usage_total": usage_total,
    }
    if later:
        report["test_sets"] = {name: {"test": str(tests[name]), "rows": len(each.test),
                                      "test_rows_in_training": each.overlap,
                                      "test_rows_near_training": len(each.near_copies), **sections[name]}
                               for name, each in {first: plan, **later}.items()}
        report["over_time"] = over_time(plan.task, primary, {first: plan, **later}, tables)
    output_dir.mkdir(parents=True, exist_ok=True)
    pred_path = output_dir / "predictions.parquet"
    with atomic_path(pred_path) as tmp:
        predictions.write_parquet(tmp)
    outputs: list[Path | None] = [pred_path]
    for name in later:
        path = output_dir / f"predictions.{name}.parquet"
        with atomic_path(path) as tmp:
            tables[name].write_parquet(tmp)
        outputs.append(path)
    for name, table in flips.items():
        if table is not None and table.height:
            path = output_dir / ("counterfactual.parquet" if name == first else f"counterfactual.{name}.parquet")
            with atomic_path(path) as tmp:
                table.write_parquet(tmp)
            outputs.append(path)
    png = slices_png = None
    from train.report import plot_confusion, plot_slices

    if plan.task == M.CLASSIFICATION:
        png = plot_confusion({n: results[n]["confusion"] for n in plan.contenders}, output_dir / "confusion.png")
    if section.get("slices"):
        slices_png = plot_slices(section["slices"], output_dir / "slices.png")
    eval_json = output_dir / "eval.json"
    write_text(eval_json, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    manifest.parameters.update(task=plan.task, k=len(plan.shots), max_tokens=plan.max_tokens, system=plan.system,
                               tests={name: str(path) for name, path in tests.items()})
    manifest.counts.update(test_rows=len(plan.test), answers=sum(len(g) for g in generations.values()),
                           test_rows_in_training=plan.overlap, test_rows_near_training=len(plan.near_copies),
                           rendering_mismatches=mismatched, requests=usage_total["requests"])
    for out in (eval_json, *outputs, png, slices_png):
        if out is not None:
            manifest.add_output(out)
    manifest.write(eval_json)
    return EvalResult(output_dir, eval_json, pred_path, png, report, slices_png)


def test_sets(test: str | Path | dict[str, str | Path]) -> dict[str, Path]:
    """The test sets by name: one file (named by its stem), or a mapping of names to files, the first the main one."""
    if isinstance(test, dict):
        if not test:
            raise TrainError("no test set given")
        return {str(name): Path(path) for name, path in test.items()}
    return {Path(test).stem: Path(test)}


def score_test_set(plan: Plan, generations: dict[str, list], judged: dict[str, list[float]], seconds: dict[str, float],
                   swapped: dict[str, list] | None, latency: dict[str, list[float]],
                   primary: str) -> tuple[pl.DataFrame, pl.DataFrame | None, dict]:
    """One test set's predictions, its counterfactual rows (None without the check) and its figures: metrics,
    intervals, slices, counterfactual flips, cost."""
    from train.cost import answer_cost
    from train.counterfactual import flip_report, flip_rows
    from train.slices import slice_report

    predictions = predictions_table(plan, generations, judged)
    results = {name: contender_metrics(plan, predictions.filter(pl.col("contender") == name)) for name in plan.contenders}
    metrics = available_metrics(plan.task, False)
    intervals, differences = uncertainty(plan, predictions, metrics)
    section: dict[str, Any] = {"results": results, "intervals": intervals, "differences": differences}
    answers = {name: predictions.filter(pl.col("contender") == name).sort("row")["prediction"].to_list()
               for name in plan.contenders}
    gold_answers = [gold(e, plan.task) for e in plan.test]
    if plan.slices:
        section["slices"] = {name: slice_report(name, keys, order, plan.task, metrics, gold_answers, answers, primary,
                                                seed=plan_seed(plan))
                             for name, (keys, order) in plan.slices.items()}
    flips = None
    if plan.terms is not None:
        parsed = {name: [M.parse_label(g.text.strip(), plan.labels) for g in gens] for name, gens in (swapped or {}).items()}
        flips = flip_rows(plan.swaps, answers, parsed, [e.id for e in plan.test])
        section["counterfactual"] = flip_report(flips, plan.swaps, plan.terms, seed=plan_seed(plan))
    section["cost"] = answer_cost(predictions, seconds, latency)
    return predictions, flips, section


def over_time(task: str, metric: str, plans: dict[str, Plan], tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
    """The objective's metric on each test set for every contender, and each set's change from the first (unpaired)."""
    from train import bootstrap

    first = next(iter(plans))
    rows = []
    for name, each in plans.items():
        table = tables[name]
        row: dict[str, Any] = {"test": name, "rows": len(each.test), "values": {}, "intervals": {}, "change": {}}
        for contender in each.contenders:
            here = table.filter(pl.col("contender") == contender).sort("row")
            row["intervals"][contender] = bootstrap.interval(task, metric, here["gold"].to_list(), here["prediction"].to_list(),
                                                             each.labels, draws=bootstrap.resample_indices(here.height, seed=plan_seed(each)))
            row["values"][contender] = row["intervals"][contender]["value"]
            if name != first:
                then = tables[first].filter(pl.col("contender") == contender).sort("row")
                row["change"][contender] = bootstrap.unpaired_difference(
                    task, metric, here["gold"].to_list(), here["prediction"].to_list(), then["gold"].to_list(),
                    then["prediction"].to_list(), each.labels, seeds=(plan_seed(each), plan_seed(plans[first])))
        rows.append(row)
    return {"metric": metric, "first": first, "rows": rows}


# -- planning (no engine) --------------------------------------------------------------------


def make_plan(adapter: str | Path, test: str | Path, config: EvalConfig, shots_from: str | Path | None,
              mapping: Mapping | None, manifest: Manifest, *, compare: dict[str, str | Path] | None = None,
              main: bool = True) -> Plan:
    """Everything decided before the engine starts; `main` is False for the later test sets of eval over time."""
    from curate.readers import read_records
    from train.slices import slice_keys

    adapter_dir = adapter_folder(adapter)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    resolved = check_base(base_spec(adapter_dir), config.model, adapter_dir)
    manifest.add_input(adapter_dir)
    manifest.models.append(resolved.describe())
    adapters, ranks = {"adapter": adapter_dir}, [int(adapter_config.get("r", 16))]
    for name, other in (compare or {}).items():
        if name in (*BASELINES, "adapter") or not name:
            raise TrainError(f"--compare: the name {name!r} is taken; name compared adapters otherwise")
        folder = adapter_folder(other)
        other_config = json.loads((folder / "adapter_config.json").read_text())
        check_base(base_spec(folder), str(resolved.path), folder)
        adapters[name] = folder
        ranks.append(int(other_config.get("r", 16)))
        manifest.add_input(folder)

    test_records = read_records(test, mapping).records
    manifest.add_input(test)
    test_rows = examples_of(test_records, f"the test set {test}")
    trained_on = adapter_training_records(adapter_dir)  # read once: the k-shot pool's default and the near-copy check
    train_rows, source = training_rows(adapter_dir, shots_from, trained_on)
    manifest.add_input(source)

    task = config.task if config.task != "auto" else detect_task(test_rows)
    if task not in M.TASKS:
        raise TrainError(f"unknown task type {task!r}; expected auto or one of {', '.join(M.TASKS)}")
    labels = config.labels or sorted({e.label for e in train_rows if e.label is not None})
    if task == M.CLASSIFICATION:
        if not labels:
            raise TrainError("classification needs a label set: the training rows have no labels; pass --labels")
        unknown = sorted({e.label for e in test_rows} - set(labels))
        if unknown:
            console.print(f"[yellow]warning:[/] test labels outside the label set count as errors: {', '.join(unknown)}")
    system = config.system if config.system is not None else shared_system(train_rows)
    k = default_k(task, labels) if config.k is None else config.k
    if k < 0:
        raise TrainError(f"k must be 0 or more, got {k}")
    shots = pick_shots(train_rows, k, task, config.seed)
    conversations = contender_conversations([e.prompt for e in test_rows], system, config.system is not None, shots, adapters)
    slices = {}
    for name in config.slice_by:
        try:
            slices[name] = slice_keys(test_records, [_input(e) for e in test_rows], name, test)
        except InputError:
            if main:
                raise  # a later test set without the field is just not sliced by it
    terms = load_terms(config.terms) if task == M.CLASSIFICATION and config.counterfactual else None
    swapped = swaps(test_rows, terms) if terms is not None else []
    swapped_conversations = contender_conversations([s.prompt for s in swapped], system, config.system is not None,
                                                    shots, adapters) if swapped else {}
    max_tokens = config.max_tokens or default_max_tokens(task, labels, resolved, config.constrain)
    check_lengths(resolved, conversations["kshot"], max_tokens, config.max_model_len)
    train_examples = train_rows if trained_on is None else examples_of(trained_on[0], "the training data")
    near = near_copies(test_records, trained_on[0]) if trained_on is not None else []
    return Plan(adapter_dir, lora_slot(max(ranks)), resolved, task, labels if task == M.CLASSIFICATION else [],
                test_rows, shots, system, str(source), overlap(test_rows, train_examples), conversations, max_tokens,
                adapters, near, slices, swapped, swapped_conversations, terms)


def contender_conversations(prompts: list[list[dict]], system: str | None, override: bool, shots: list[Example],
                            adapters: dict[str, Path]) -> dict[str, list[list[dict]]]:
    """What each contender is asked: the prompt with the shared system message, for k-shot after the shots."""
    prompts = [with_system(p, system, override=override) for p in prompts]
    conversations = {"base": prompts, "kshot": [kshot_prompt(p, shots, system) for p in prompts]}
    conversations.update({name: prompts for name in adapters})
    return conversations


def _input(example: Example) -> str:
    return next((m["content"] for m in reversed(example.prompt) if m["role"] == "user"), "")


def check_base(recorded: str | None, model: str | None, adapter_dir: Path) -> ResolvedModel:
    """The base model to serve the adapter on: the recorded one; another one given is an error."""
    if not recorded:
        raise TrainError(f"{adapter_dir}/adapter_config.json records no base model (base_model_name_or_path)")
    if model is None:
        return resolve_llm(recorded)
    resolved = resolve_llm(model)
    recorded_path = Path(recorded).expanduser()
    same = recorded_path.exists() and recorded_path.resolve() == Path(resolved.path).resolve()
    if not same and str(resolved.path) != recorded:
        raise TrainError(
            f"the adapter in {adapter_dir} was trained on {recorded}, not on {resolved.path}: a LoRA adapter only "
            "fits the base model it was trained on; leave out --model to use that one"
        )
    return resolved


def examples_of(records: pl.DataFrame, what: str) -> list[Example]:
    labels = records["label"].to_list() if "label" in records.columns else [None] * records.height
    return to_examples(records["id"].to_list(), records["messages"].to_list(), labels, what)


def training_rows(adapter_dir: Path, shots_from: str | Path | None,
                  trained_on: tuple[pl.DataFrame, Path] | None = None) -> tuple[list[Example], Path]:
    """The rows the k-shot prompt draws from: the declared pool (--shots-from), else the adapter's own training split.

    `trained_on`: the adapter's training records and file, when the caller has read them already.
    """
    from curate.readers import read_records

    if shots_from is not None:
        return examples_of(read_records(shots_from).records, f"the shots file {shots_from}"), Path(shots_from)
    hint = "pass --shots-from FILE with training rows for the k-shot prompt"
    if trained_on is None:
        source = adapter_training_file(adapter_dir, hint)
        trained_on = (read_records(source).records, source)
    records, source = trained_on
    rows = examples_of(records, f"the training data {source}")
    split = adapter_dir.parent / "split.json"
    if split.is_file():  # k-shot draws from the rows the adapter was trained on, not its validation rows
        keep = set(json.loads(split.read_text())["train"])
        rows = [e for e in rows if e.id in keep]
        if not rows:
            raise TrainError(f"none of the training rows in {split} is in {source} any more; {hint}")
    return rows, source


def adapter_training_file(adapter_dir: Path, hint: str) -> Path:
    """The file the adapter was trained on, from its training manifest (warns when it changed since)."""
    recorded = manifest_path(adapter_dir)
    if not recorded.is_file():
        raise TrainError(f"{adapter_dir} has no training manifest ({recorded.name}) naming its training data; {hint}")
    inputs = json.loads(recorded.read_text()).get("inputs") or []
    if not inputs:
        raise TrainError(f"the adapter was trained on data given in memory, not a file; {hint}")
    source = Path(inputs[0]["path"])
    if not source.exists():
        raise TrainError(f"the adapter's training data {source} is not there any more; {hint}")
    if inputs[0].get("hash") and content_hash(source) != inputs[0]["hash"]:
        console.print(f"[yellow]warning:[/] {source} changed since the adapter was trained on it")
    return source


def adapter_training_records(adapter_dir: Path) -> tuple[pl.DataFrame, Path] | None:
    """Every row the adapter was trained or validated on, and its file; None when its manifest does not say."""
    from curate.readers import read_records

    try:
        source = adapter_training_file(adapter_dir, "")
    except TrainError:
        return None
    return read_records(source).records, source


def near_copies(test: pl.DataFrame, training: pl.DataFrame) -> list[str]:
    """Ids of test rows that `curate decontaminate`'s checks would call contaminated by `training`."""
    from curate.decontaminate import decontaminate

    if test.height == 0 or training.height == 0:
        return []
    return decontaminate(test, training).drops["id"].to_list()


def default_max_tokens(task: str, labels: list[str], resolved: ResolvedModel, constrain: bool) -> int:
    """Room for the longest label (constrained: even spelled one character a token), 64 or 256 tokens."""
    if task == M.CLASSIFICATION:
        if constrain:
            return max(len(label) for label in labels) + 4
        tokenizer = _tokenizer(resolved)
        return max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels) + 8
    return 64 if task == M.EXACT else 256


def check_lengths(resolved: ResolvedModel, conversations: list[list[dict]], max_tokens: int, max_model_len: int) -> None:
    longest = max((len(ids) for ids in expected_prompt_ids(resolved, conversations)), default=0)
    if longest + max_tokens > max_model_len:
        raise TrainError(
            f"the longest k-shot prompt is {longest} tokens; with {max_tokens} new tokens it does not fit "
            f"--max-model-len {max_model_len}: use fewer shots (--k) or a larger --max-model-len"
        )


def expected_prompt_ids(resolved: ResolvedModel, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids `train lora` gives a prompt: the chat template with the generation prompt, tokenized as is."""
    from train.tokenize import render

    tokenizer = _tokenizer(resolved)
    texts = [render(tokenizer, c, add_generation_prompt=True) for c in conversations]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(resolved: ResolvedModel):
    from train.lora import load_tokenizer

    key = str(resolved.path)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(resolved)
    return _TOKENIZERS[key]


def lora_slot(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    for slot in LORA_RANKS:
        if slot >= rank:
            return slot
    raise TrainError(f"LoRA rank {rank} is above what vLLM serves ({LORA_RANKS[-1]})")


def available_metrics(task: str, judge: bool) -> tuple[str, ...]:
    names = M.METRICS[task]
    return tuple(n for n in names if n != "judge_win_rate" or judge)


def answer_mode(task: str, constrain: bool) -> str:
    if task != M.CLASSIFICATION:
        return "free generation"
    return "constrained to the label set (guided choice)" if constrain else "free generation, parsed to the first label named"


# -- after generation ----------------------------------------------------------------------------


def rendering_mismatches(plan: Plan, generations: dict[str, list]) -> int:
    """Prompts whose tokens in vLLM differ from training's rendering of the same messages."""
    count = 0
    for name in plan.contenders:
        expected = expected_prompt_ids(plan.resolved, plan.conversations[name])
        count += sum(g.prompt_token_ids is not None and g.prompt_token_ids != e for g, e in zip(generations[name], expected))
    return count


def predictions_table(plan: Plan, generations: dict[str, list], judged: dict[str, list[float]]) -> pl.DataFrame:
    """One row per test row and contender: the prompt, gold answer, raw answer, parsed prediction and scores."""
    rows = []
    for name in plan.contenders:
        for i, (example, gen) in enumerate(zip(plan.test, generations[name])):
            expected = gold(example, plan.task)
            raw = gen.text.strip()
            prediction = M.parse_label(raw, plan.labels) if plan.task == M.CLASSIFICATION else raw
            row = {
                "row": i, "id": example.id, "contender": name,
                "prompt": _input(example),
                "gold": expected, "raw": gen.text, "prediction": prediction,
                "correct": prediction == expected if plan.task == M.CLASSIFICATION else M.exact_match(expected, prediction) == 1.0,
                "token_f1": M.token_f1(expected, prediction), "rouge_l": None, "judge": None,
                "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens, "finish_reason": gen.finish_reason,
            }
            rows.append(row)
    table = pl.DataFrame(rows, schema_overrides={"rouge_l": pl.Float64, "judge": pl.Float64, "prediction": pl.String})
    if plan.task == M.FREE:
        table = table.with_columns(pl.Series("rouge_l", M.rouge_l(table["gold"].to_list(), table["prediction"].to_list())))
        outcomes = [judged.get(name, [None] * len(plan.test))[i] for name, i in zip(table["contender"], table["row"])]
        table = table.with_columns(pl.Series("judge", outcomes, dtype=pl.Float64))
    return table


def contender_metrics(plan: Plan, rows: pl.DataFrame) -> dict[str, Any]:
    rows = rows.sort("row")
    result = M.score(plan.task, rows["gold"].to_list(), rows["prediction"].to_list(), plan.labels)
    if plan.task == M.FREE and rows["judge"].null_count() == 0:
        result["judge_win_rate"] = M.win_rate(rows["judge"].to_list())
    result["rows"] = rows.height
    return result


def uncertainty(plan: Plan, predictions: pl.DataFrame, metrics: tuple[str, ...]) -> tuple[dict, dict]:
    """Bootstrap intervals per contender and metric, and paired differences that a reader compares.

    Differences: every adapter but the main one against the main adapter (`NAME-adapter`),
    and the main adapter against each baseline (`adapter-kshot`, `adapter-base`). Every
    interval uses the same resampled rows, so they are comparable with each other.
    """
    from train import bootstrap

    by = {name: predictions.filter(pl.col("contender") == name).sort("row") for name in plan.contenders}
    gold = by["base"]["gold"].to_list()
    draws = bootstrap.resample_indices(len(gold), seed=plan_seed(plan))
    metrics = tuple(m for m in metrics if m != "judge_win_rate")
    intervals = {name: {m: bootstrap.interval(plan.task, m, gold, rows["prediction"].to_list(), plan.labels, draws=draws)
                        for m in metrics} for name, rows in by.items()}
    pairs = [(name, "adapter") for name in plan.adapters if name != "adapter"] + [("adapter", b) for b in BASELINES]
    differences = {f"{a}-{b}": {m: bootstrap.paired_difference(plan.task, m, gold, by[a]["prediction"].to_list(),
                                                               by[b]["prediction"].to_list(), plan.labels, draws=draws)
                                for m in metrics} for a, b in pairs}
    return intervals, differences


def plan_seed(plan: Plan) -> int:
    """A resampling seed fixed by the test rows, so two evaluations on one test set draw the same rows."""
    import hashlib

    return int.from_bytes(hashlib.blake2b("".join(e.id for e in plan.test).encode(), digest_size=4).digest(), "little")


def judge_against_base(engine, plan: Plan, generations: dict[str, list]) -> dict[str, list[float]]:
    """For k-shot and adapter: the base model judges each answer against the base model's, in both orders.

    A row scores 1 when the contender wins both orders, 0.5 for a split or ties, 0 when it loses both.
    """
    from curate.llm import SamplingConfig

    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16, seed=0)
    base = [g.text.strip() for g in generations["base"]]
    out: dict[str, list[float]] = {}
    for name in [c for c in plan.contenders if c != "base"]:
        mine = [g.text.strip() for g in generations[name]]
        first = [judge_prompt(e, a, b) for e, a, b in zip(plan.test, mine, base)]
        second = [judge_prompt(e, b, a) for e, a, b in zip(plan.test, mine, base)]
        answers = engine.chat(first + second, greedy, json_schema=JUDGE_SCHEMA)
        n = len(plan.test)
        out[name] = [(_points(answers[i].text, "A") + _points(answers[n + i].text, "B")) / 2 for i in range(n)]
    return out


def judge_prompt(example: Example, a: str, b: str) -> list[dict[str, str]]:
    request = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in example.prompt if m["role"] != "system")
    return [
        {"role": "system", "content": "You compare two answers to the same request. Given the reference answer, say which "
                                      "answer is better: A, B, or tie. Answer in JSON."},
        {"role": "user", "content": f"{request}\n\nREFERENCE ANSWER:\n{example.answer}\n\nANSWER A:\n{a}\n\nANSWER B:\n{b}"},
    ]


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def _points(text: str, mine: str) -> float:
    try:
        winner = json.loads(text).get("winner")
    except (json.JSONDecodeError, AttributeError):
        winner = None
    return 1.0 if winner == mine else 0.5 if winner in ("tie", None) else 0.0  # no verdict counts as a tie

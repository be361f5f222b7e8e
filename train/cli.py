"""The `train` command: LoRA fine-tuning, evaluation through vLLM, and merging."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch loads OpenMP: threads that spin while waiting lose badly (measured 4-5x) when the
# laptop's few cores are shared with anything else; sleeping waits cost little when they are not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
from rich.console import Console

from curate import __version__
from curate.atomic import check_parents
from curate.console import SmallsetGroup, console
from curate.errors import InputError
from curate.layouts import LAYOUTS
from curate.library_log import verbose_option
from curate.renamed_flags import renamed
from train.config import MAX_EPOCHS, LoraTrainConfig
from train.cost import DEFAULT_LATENCY_ROWS
from train.curve import DEFAULT_SIZES, DEFAULT_TOLERANCE

_D = LoraTrainConfig()  # the defaults that --help shows


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="train")
@verbose_option
def main() -> None:
    """Fine-tune a LoRA adapter on an accepted set and compare it with the base model.

    The student is the default LLM (see `curate models`) unless --model names another.
    """


def _output_folder(ctx, param, value: Path | None) -> Path | None:
    """An output folder, checked before any model loads: not a file, and not under one."""
    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise click.BadParameter(f"{value} is a file; give a folder (it is created if missing)", param_hint="-o")
    try:
        check_parents(value)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="-o") from None
    return value


def _devices(ctx, param, value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: give a number of processes (1 or more) or auto", param_hint="--devices")
    return int(value)


def lora_options(command):
    """The training settings of `train lora`, shared by every command that trains (`lora`, `curve`)."""
    for option in reversed(_LORA_OPTIONS):
        command = option(command)
    return command


def eval_options(command):
    """How `train eval` prompts and answers, shared by every command that evaluates (`eval`, `curve`)."""
    for option in reversed(_EVAL_OPTIONS):
        command = option(command)
    return command


_EVAL_OPTIONS = [
    click.option("-k", "--k", "k", type=int, default=None, help="Shots in the k-shot prompt.  [default: one per label (at most 8) for classification, else 3]"),
    click.option("--task", type=click.Choice(["auto", "classification", "exact", "free"]), default="auto", help="Task type, which decides the metrics."),
    click.option("--labels", default=None, help="Comma-separated label set for classification.  [default: the training rows' labels]"),
    click.option("--constrain/--no-constrain", default=True, help="Classification: constrain answers to the label set (guided choice), or parse free answers."),
    click.option("--system", default=None, help="System message for every prompt.  [default: the one all training rows share, if any]"),
    click.option("--max-tokens", type=int, default=None, help="New tokens per answer.  [default: by task]"),
    click.option("--max-model-len", type=int, default=2048, help="Context length of the engine."),
]

_LORA_OPTIONS = [
    click.option("--model", default=None, help="Base model: 'default' (packaged SmolLM2-135M-Instruct), a local folder or a hub id.  [default: default]"),
    click.option("--epochs", type=int, default=_D.epochs, help=f"Passes over the training set (at most {MAX_EPOCHS})."),
    click.option("--lr", type=float, default=_D.lr, help="Peak learning rate (linear warmup, then cosine decay)."),
    click.option("--rank", type=int, default=_D.rank, help="LoRA rank r."),
    renamed("--alpha", "--lora-alpha"),  # --alpha is a significance level in `curate drift` and `curate audit`
    click.option("--lora-alpha", "alpha", type=int, default=_D.alpha, help="LoRA alpha (scale alpha/r), peft's lora_alpha."),
    click.option("--dropout", type=float, default=_D.dropout, help="LoRA dropout."),
    click.option("--val-fraction", type=float, default=_D.val_fraction, help="Share of rows held out for validation (stratified by label)."),
    click.option("--val-size", type=int, default=None, help="Exact number of validation rows (overrides --val-fraction)."),
    click.option("--val-exclude-flagged/--val-include-flagged", default=_D.val_exclude_flagged, show_default=True,
                 help="Keep rows curation flagged (label_issue, label_conflict) out of validation; they still train."),
    click.option("--eval-every", type=int, default=None, help="Evaluate every N optimizer steps.  [default: every epoch]"),
    click.option("--patience", type=int, default=_D.patience, help="Stop after N evaluations without a lower validation loss."),
    click.option("--batch-size", type=int, default=None, help="Effective batch: rows per optimizer step.  [default: 16, or train rows // --min-steps-per-epoch when fewer]"),
    click.option("--min-steps-per-epoch", type=int, default=_D.min_steps_per_epoch, help="With the default batch: shrink it on small sets so that each epoch has this many steps."),
    click.option("--micro-batch-size", type=int, default=_D.micro_batch_size, help="Rows per forward pass (the rest is gradient accumulation)."),
    click.option("--max-length", type=int, default=None, help="Tokens per row; longer rows are truncated.  [default: 99th percentile of the data, at most 2048]"),
    click.option("--seed", type=int, default=_D.seed, help="Seed for the adapter's init, the split, data order and dropout."),
    click.option("--qlora", is_flag=True, help="Load the base model in 4-bit (bitsandbytes); needs a CUDA GPU."),
    click.option("--report-to", "report_to", multiple=True, metavar="NAME[,NAME]",
                 help="Log loss, learning rate, tokens/s and validation loss to tensorboard (OUTPUT/tensorboard), "
                      "mlflow (OUTPUT/mlruns, or MLFLOW_TRACKING_URI) and/or trackio (its local store, TRACKIO_DIR; "
                      "project smallset); repeatable or comma-separated; `train eval` adds its final metrics to the "
                      "same run.  [default: none]"),
]


@main.command(context_settings={"show_default": True})
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), callback=_output_folder, help="Output folder (adapter/, curves.png, manifest, checkpoints/).")
@lora_options
@click.option("--devices", default=_D.devices, callback=_devices, metavar="N|auto",
              help="Data-parallel processes, one per GPU (DDP under torchrun); a step keeps its --batch-size rows, "
                   "shared out. auto: every visible GPU when there are several, else 1. Without a GPU, N gloo "
                   "processes share the CPU: for testing, not faster.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoints/last.")
@click.option("--init-adapter", "init_adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="Warm start from this adapter's weights (same base, rank and modules) instead of a fresh LoRA init.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def lora(data: Path, output: Path, quiet: bool, resume: bool, **options) -> None:
    """Train a LoRA adapter on DATA (any file `curate ingest` reads) and keep the best one.

    A share of DATA is held out for validation; training stops early when the validation
    loss stops falling, and the adapter from the best evaluation is saved. The loss covers
    only the assistant replies, rendered with the base model's chat template.

    \b
    Examples:
      train lora accepted.parquet -o runs/lora --epochs 3 --eval-every 20
      train lora accepted.parquet -o runs/lora --report-to tensorboard,mlflow
      train lora december.parquet -o runs/lora-dec --init-adapter runs/lora-nov/adapter
    """
    from curate.errors import SmallsetError
    from train import distributed
    from train.lora import train_lora

    config = LoraTrainConfig(**options)
    if not distributed.launched(config.devices) and (n := distributed.processes(config.devices)) > 1:
        raise SystemExit(distributed.launch(n, _command_line(click.get_current_context())))
    try:
        result = train_lora(data, output, config, resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        _interrupted(data, output)
    except SmallsetError:
        if distributed.rank() > 0:
            raise SystemExit(1) from None  # every rank meets the same input: rank 0 says what is wrong
        raise
    except Exception:
        if distributed.interrupted():  # a peer stopped first, and a collective failed before the Ctrl-C arrived
            _interrupted(data, output)
        raise
    if distributed.rank() > 0:
        return
    console.print(
        f"adapter: {result.adapter_dir}  best validation loss {result.best_val_loss:.4f} "
        f"(epoch {result.best_epoch}, step {result.best_step}{', stopped early' if result.stopped_early else ''}), "
        f"{result.tokens_per_s:.0f} tokens/s"
    )


@main.command("eval", context_settings={"show_default": True})
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--test", "test", required=True, multiple=True, metavar="[NAME=]PATH",
              help="Held-out test set: any file `curate ingest` reads. Repeat for eval over time (named by file stem or "
                   "NAME=PATH): every contender answers each, the first is the one the verdict is about.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None, callback=_output_folder, help="Output folder (eval.json, predictions.parquet, confusion.png, slices.png, counterfactual.parquet).  [default: eval/ beside the adapter]")
@click.option("--model", default=None, help="Base model; must be the one the adapter was trained on.  [default: the one the adapter records]")
@click.option("--shots-from", type=click.Path(path_type=Path), default=None, help="The pool the k-shot rows are drawn from (one pool for every adapter compared).  [default: the adapter's training split]")
@click.option("--compare", "compare", multiple=True, metavar="NAME=DIR", help="Another adapter of the same base to score beside ADAPTER in the same engine (repeatable).")
@eval_options
@click.option("--seed", type=int, default=0, help="Chooses the k-shot examples.")
@click.option("--judge", is_flag=True, help="Free text: also a win rate against the base model, judged by the base model.")
@click.option("--metric", default=None, help="Objective metric for the verdict, e.g. accuracy, macro_f1, exact_match, token_f1, rouge_l.")
@click.option("--target", default=None, help="Objective target: a threshold (0.85, 85%) or points over k-shot or base (+30, kshot+30, base+5).")
@click.option("--slice-by", "slice_by", multiple=True, metavar="FIELD",
              help="Score every contender per slice of the test rows (repeatable): source, label, length (word-count "
                   "buckets), a meta key (dotted for nested) or a synth axis; worst slice, gap, slices.png.")
@click.option("--counterfactual/--no-counterfactual", default=True,
              help="Classification: ask again with identity terms swapped (he/she, young/old, Christian/Muslim...) "
                   "and count how often each contender's answer flips.")
@click.option("--terms", type=click.Path(path_type=Path), default=None,
              help="YAML file of identity-term pairs by group for the counterfactual check.  [default: curate.identity_terms]")
@click.option("--latency-rows", type=int, default=DEFAULT_LATENCY_ROWS,
              help="Test rows each contender also answers one request at a time, timed, for the latency per answer; 0: batch timing only.")
@click.option("--layout", type=click.Choice(list(LAYOUTS)), help="Layout of the test file; detected from the column names when omitted.")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN", help="Which test-file column plays a layout field (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--engine", metavar="NAME", help="The engine with LoRA that answers: vllm (one in this process) or ray "
              "(vLLM replicas as Ray actors, e.g. --engine-option replicas=2).  [default: vllm]")
@click.option("--engine-option", multiple=True, metavar="KEY=VALUE", help="Any field of the engine's config (repeatable).")
def eval_(adapter: Path, test: tuple[str, ...], output: Path | None, shots_from: Path | None, labels: str | None, layout: str | None,
          pairs: tuple[str, ...], compare: tuple[str, ...], quiet: bool, engine: str | None, engine_option: tuple[str, ...],
          slice_by: tuple[str, ...], counterfactual: bool, terms: Path | None, latency_rows: int, **options) -> None:
    """Score ADAPTER against its base model zero-shot and with a k-shot prompt, on a held-out TEST set.

    One vLLM engine with LoRA answers every test row three times (greedy decoding, the
    base model's chat template, the training records' layout). Metrics follow the task:
    accuracy, macro-F1 and a confusion matrix for classification; exact match and token F1
    for short answers; ROUGE-L (and with --judge a win rate) for free text. Every figure
    has a 95% bootstrap interval; --compare adapters get a paired one against ADAPTER.
    Every contender's tokens and latency per answer are measured, and k-shot's cost over
    the adapter's is printed under the verdict.

    \b
    Examples:
      train eval runs/lora --test recipes/examples/support_tickets_test.jsonl --metric accuracy --target +30
      train eval runs/full --test test.jsonl --shots-from pool.parquet --compare no-select=runs/no-select
      train eval runs/lora --test test.jsonl --slice-by source --slice-by length --terms my_terms.yaml
      train eval runs/lora --test june=test_june.jsonl --test december=test_december.jsonl
    """
    from curate.engine_cli import EngineChoice
    from curate.layouts import Mapping
    from train.evaluate import EvalConfig, evaluate
    from train.report import counterfactual_line, cost_table, over_time_table, results_table, slices_tables

    config = EvalConfig(labels=_labels(labels), slice_by=list(slice_by), counterfactual=counterfactual,
                        terms=None if terms is None else str(terms), latency_rows=latency_rows, **options)
    choice = EngineChoice.from_cli(engine, None, None, engine_option)
    result = evaluate(adapter, _test_sets(test), output, config, shots_from=shots_from, mapping=Mapping.parse(layout, pairs),
                      progress=not quiet, compare=_named_paths(compare, "--compare"), engine_choice=choice)
    from train.tracking import log_eval

    tracked = log_eval(result.report["adapters"]["adapter"], result.report)
    out = Console()
    out.print(results_table(result.report))
    if cost := result.report["cost"].get("text"):
        out.print(cost, highlight=False)  # under the verdict: what the accuracy costs per answer
    out.print(cost_table(result.report))
    for table in [*slices_tables(result.report), over_time_table(result.report)]:
        if table is not None:
            out.print(table)
    if line := counterfactual_line(result.report):
        out.print(line, highlight=False)
    console.print(f"eval: {result.eval_json}  predictions: {result.predictions}"
                  + (f"  confusion: {result.confusion_png}" if result.confusion_png else "")
                  + (f"  slices: {result.slices_png}" if result.slices_png else "")
                  + (f"  logged to: {', '.join(tracked)}" if tracked else ""))


def _command_line(ctx: click.Context) -> list[str]:
    """This command's arguments with every option spelled out: what each rank runs."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif value is None or param.name == "help":
            continue
        elif param.is_flag:
            args += [param.opts[0]] if value else param.secondary_opts[:1]
        elif param.multiple:
            args += [x for item in value for x in (param.opts[0], str(item))]
        else:
            args += [param.opts[0], str(value)]
    return args


def _interrupted(data: Path, output: Path):
    from train import distributed

    if distributed.rank() == 0:
        console.print(f"interrupted; `train lora {data} -o {output} --resume` continues from the last evaluation")
    raise SystemExit(130) from None


def _labels(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _test_sets(values: tuple[str, ...]) -> dict[str, Path]:
    """--test values by name: NAME=PATH, or a path named by its stem (a path that exists is never split at '=')."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or Path(value).exists():
            name, path = Path(value).stem, value
        name, path = name.strip(), path.strip()
        if not name or not path or not all(c.isalnum() or c in "-_." for c in name):
            raise click.BadParameter(f"{value!r}: expected PATH or NAME=PATH, the name of letters, digits, '-', '_', '.'",
                                     param_hint="--test")
        if name in out:
            raise click.BadParameter(f"two test sets are named {name!r}; name them with NAME=PATH", param_hint="--test")
        out[name] = Path(path)
    return out


def _named_paths(pairs: tuple[str, ...], flag: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"{pair!r}: expected NAME=DIR", param_hint=flag)
        if name.strip() in out:
            raise click.BadParameter(f"the name {name.strip()!r} is given twice", param_hint=flag)
        out[name.strip()] = Path(path.strip())
    return out


@main.command(context_settings={"show_default": True})
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--test", "test", required=True, type=click.Path(path_type=Path), help="Held-out test set: any file `curate ingest` reads.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), callback=_output_folder, help="Output folder (curve.json, curve.png, size-N/, eval/).")
@click.option("--sizes", default=DEFAULT_SIZES, help="Training-set sizes in rows, comma-separated; 'all' is every row of DATA.")
@click.option("--metric", default="accuracy", help="The objective's metric: accuracy, macro_f1, exact_match, token_f1, rouge_l.")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="Points: the knee is the smallest size within this of the best size.")
@click.option("--stratify", type=click.Choice(["auto", "keep", "balance"]), default="auto",
              help="Subsets' label mix: keep (proportional), balance, auto (balance for macro_f1, else keep).")
@click.option("--shots-from", type=click.Path(path_type=Path), default=None, help="The pool the k-shot rows are drawn from.  [default: DATA]")
@lora_options
@eval_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def curve(data: Path, test: Path, output: Path, sizes: str, metric: str, tolerance: float, stratify: str,
          shots_from: Path | None, k: int | None, task: str, labels: str | None, constrain: bool, system: str | None,
          max_tokens: int | None, max_model_len: int, quiet: bool, **train_options) -> None:
    """Train on nested, seeded subsets of DATA and plot the metric against the number of rows.

    Each size contains the smaller ones (stratified by label as `curate select` picks); all
    adapters are scored by one engine against one base and one k-shot baseline, each with a
    95% bootstrap interval. The knee is the smallest size within --tolerance points of the
    best: `curate select --size auto --curve OUTPUT/curve.json` picks that many rows.

    \b
    Example:
      train curve curated.parquet --test test.jsonl --sizes 125,250,500,1000,all -o runs/curve --epochs 2
    """
    from train.curve import CurveConfig, learning_curve
    from train.evaluate import EvalConfig

    curve_config = CurveConfig(sizes=sizes, metric=metric, tolerance=tolerance, stratify=stratify)
    train_config = LoraTrainConfig(**train_options)
    eval_config = EvalConfig(k=k, task=task, labels=_labels(labels), constrain=constrain, system=system,
                             max_tokens=max_tokens, max_model_len=max_model_len)
    summary = learning_curve(data, test, output, curve_config, train_config, eval_config, shots_from=shots_from,
                             progress=not quiet)
    for p in summary["points"]:
        console.print(f"{p['size']:>6} rows: {metric} {p['value']:.1%} [{p['low']:.1%}, {p['high']:.1%}]"
                      f"  train {p['train_seconds'] or 0:.0f} s", highlight=False)
    kshot = summary["baselines"]["kshot"]
    console.print(f"base k-shot: {kshot['value']:.1%}; [bold]knee: {summary['knee']['size']} rows[/] "
                  f"({summary['knee']['reason']}); {output / 'curve.json'}, {output / 'curve.png'}", highlight=False)


@main.command(context_settings={"show_default": True})
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), callback=_output_folder, help="Folder for the merged model.")
@click.option("--model", default=None, help="Base model to merge into.  [default: the one the adapter records]")
def merge(adapter: Path, output: Path, model: str | None) -> None:
    """Merge ADAPTER (an adapter folder or a `train lora` output) into its base model's weights.

    For serving stacks without LoRA support; the merged folder loads like any model.

    \b
    Example:
      train merge runs/lora -o runs/merged
    """
    from train.merge import merge_adapter

    console.print(f"merged model: {merge_adapter(adapter, output, model)}")


if __name__ == "__main__":
    main()

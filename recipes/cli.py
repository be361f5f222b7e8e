"""The `smallset` command: run a recipe from its objective to its verdict."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in `train`: the stages share few cores

import click

from curate import __version__
from curate.console import SmallsetGroup, console
from curate.library_log import verbose_option


@click.group(cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="smallset")
@verbose_option
def main() -> None:
    """Run recipes: one YAML file from the objective to the trained adapter and its verdict.

    A recipe (see recipes/*.yaml) names the objective, the sources (real files and/or a
    synth task), the curation steps, review, training and evaluation. `curate`, `synth`
    and `train` do the work; `smallset run` chains them and caches every stage.
    """


def _run_dir(recipe, run_dir: Path | None) -> Path:
    return run_dir if run_dir is not None else Path("runs") / recipe.name


@main.command()
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the stages' outputs and the report.  [default: runs/NAME]")
@click.option("--from", "from_stage", metavar="STAGE", default=None,
              help="Run again from this stage on, even if it is done (e.g. --from train).")
@click.option("--until", "until_stage", metavar="STAGE", default=None,
              help="Stop after this stage (e.g. --until select: the curated set, no training).")
@click.option("--update", "update_files", multiple=True, metavar="NEW_DATA",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A new batch of data (repeatable): curate it, retrain, and promote the new adapter only if it is "
                   "better (the recipe's `monitor` section says how); every version is kept in RUN/versions/N.")
@click.option("--test", "update_test", metavar="NEW_TEST", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --update: the test set written for the new batch; the candidate must do better on it and "
                   "no worse on the earlier ones.")
def run(recipe_file: Path, run_dir: Path | None, from_stage: str | None, until_stage: str | None,
        update_files: tuple[Path, ...], update_test: Path | None) -> None:
    """Run RECIPE: every stage whose inputs changed, skipping the rest.

    Each stage is cached by a hash of its inputs and options: a rerun skips finished
    stages, and an interrupted run resumes where it stopped. With review in the recipe,
    the run pushes the routed rows to Argilla and either waits (`review: {wait: true}`:
    annotate, then run again) or trains on what is decided so far.

    With --update, the recipe's run is version 1 of the adapter and the new batch makes the
    next one: drift check, curation, review, training, evaluation beside the current adapter
    on every test set; it is promoted only when it is not worse on the earlier test sets and
    better on the new one (RUN/current.json names the adapter in use).

    \b
    Example:
      smallset run recipes/support_tickets.yaml
      smallset run recipes/support_tickets.yaml --from train
      smallset run recipes/bring_your_own.yaml --until select
      smallset run recipes/support_tickets.yaml --update recipes/examples/support_tickets_update.csv --test recipes/examples/support_tickets_update_test.jsonl
    """
    from recipes.runner import run_recipe
    from recipes.spec import load_recipe
    from recipes.update import Update

    if bool(update_files) != (update_test is not None):
        raise click.UsageError("--update NEW_DATA and --test NEW_TEST go together: the new adapter is judged on "
                               "the test set written for the new data")
    update = Update(list(update_files), update_test) if update_files else None
    recipe = load_recipe(recipe_file)
    folder = _run_dir(recipe, run_dir)
    try:
        result = run_recipe(recipe, folder, from_stage=from_stage, until_stage=until_stage, update=update)
    except KeyboardInterrupt:
        console.print(f"interrupted; `smallset run {recipe_file}` resumes from the stage that was running")
        raise SystemExit(130) from None
    if result.status == "waiting":
        console.print(result.message)
        return
    where = f"stopped after {until_stage}" if until_stage else f"report: {folder / 'report.html'}"
    console.print(f"done: {len(result.ran)} stage(s) ran, {len(result.skipped)} skipped; {where}")


@main.command()
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder to compare with.  [default: runs/NAME]")
def check(recipe_file: Path, run_dir: Path | None) -> None:
    """Validate RECIPE and list its stages, and which of them a run would skip.

    \b
    Example:
      smallset check recipes/support_tickets.yaml --run-dir runs/support-tickets
    """
    from recipes.runner import is_fresh, load_state
    from recipes.spec import load_recipe
    from recipes.stages import plan

    from recipes.update import check_monitor, history

    recipe = load_recipe(recipe_file)
    folder = _run_dir(recipe, run_dir)
    state = load_state(folder)["stages"] if folder.exists() else {}
    stages = plan(recipe, folder)
    check_monitor(recipe, stages, folder)  # the `monitor` options too, before an update needs them
    width = max(14, *(len(s.name) for s in stages))
    for n, stage in enumerate(stages, 1):
        entry, key = state.get(stage.name, {}), stage.key(folder)
        status = "done" if is_fresh(stage, entry, key) else entry.get("status", "to run") if entry.get("key") == key else "to run"
        console.print(f"{n:>2}. {stage.name:<{width}} {status:<8} {stage.what}", highlight=False, soft_wrap=True)
    versions = history(folder)
    if versions:
        current = next((v["version"] for v in versions if v["in_use"]), None)
        listed = ", ".join(f"{v['version']} {v['status']}" for v in versions)
        console.print(f"versions: {listed}; current: {current}", highlight=False)
    where = folder if folder.exists() else f"{folder}, where nothing ran yet"
    console.print(f"{recipe_file}: valid; stages compared with the run folder {where}", highlight=False, soft_wrap=True)

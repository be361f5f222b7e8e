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
def run(recipe_file: Path, run_dir: Path | None, from_stage: str | None, until_stage: str | None) -> None:
    """Run RECIPE: every stage whose inputs changed, skipping the rest.

    Each stage is cached by a hash of its inputs and options: a rerun skips finished
    stages, and an interrupted run resumes where it stopped. With review in the recipe,
    the run pushes the routed rows to Argilla and either waits (`review: {wait: true}`:
    annotate, then run again) or trains on what is decided so far.

    \b
    Example:
      smallset run recipes/support_tickets.yaml
      smallset run recipes/support_tickets.yaml --from train
      smallset run recipes/bring_your_own.yaml --until select
    """
    from recipes.runner import run_recipe
    from recipes.spec import load_recipe

    recipe = load_recipe(recipe_file)
    folder = _run_dir(recipe, run_dir)
    try:
        result = run_recipe(recipe, folder, from_stage=from_stage, until_stage=until_stage)
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

    recipe = load_recipe(recipe_file)
    folder = _run_dir(recipe, run_dir)
    state = load_state(folder)["stages"] if folder.exists() else {}
    stages = plan(recipe, folder)
    width = max(14, *(len(s.name) for s in stages))
    for n, stage in enumerate(stages, 1):
        entry, key = state.get(stage.name, {}), stage.key(folder)
        status = "done" if is_fresh(stage, entry, key) else entry.get("status", "to run") if entry.get("key") == key else "to run"
        console.print(f"{n:>2}. {stage.name:<{width}} {status:<8} {stage.what}", highlight=False, soft_wrap=True)
    where = folder if folder.exists() else f"{folder}, where nothing ran yet"
    console.print(f"{recipe_file}: valid; stages compared with the run folder {where}", highlight=False, soft_wrap=True)

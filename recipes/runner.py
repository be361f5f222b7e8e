"""Run a recipe stage by stage, skipping what is already done and resuming what was cut off.

The run folder holds one subfolder per stage and `run.json`, the state: each stage's key
(see `recipes.stages.Stage.key`), status and timings. A stage whose key and output are
unchanged is skipped; a stage that was interrupted runs again in place, and the commands
that can resume (synth's journal, `train lora --resume`) continue where they stopped; a
stage whose key changed starts from an empty folder. `run.json` is written atomically
after every change, so a kill at any moment leaves a state the next run understands.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate.atomic import write_text
from curate.console import console
from curate.library_log import LOG_ENV
from curate.locks import FileLock, LockHeldError
from recipes.commands import RunError, run_command
from recipes.spec import Recipe
from recipes.stages import Stage, plan

STATE_FILE = "run.json"


@dataclass
class RunResult:
    run_dir: Path
    status: str
    """'done', or 'waiting' when the run stopped for people to review."""
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class Context:
    """What a stage the runner performs itself (review, report) gets to work with."""

    recipe: Recipe
    run_dir: Path
    stages: list[Stage]
    state: dict[str, Any]
    say: Callable[[str], None]


def utc_now() -> str:
    """The time stamp of run.json and version.json entries."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.exists():
        return {"stages": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def _save(run_dir: Path, state: dict[str, Any]) -> None:
    write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    lock = FileLock(run_dir / ".lock", blocking=False)  # creates run_dir
    try:
        lock.acquire()
    except LockHeldError:
        raise RunError(f"{run_dir} is in use by another run of this recipe") from None
    try:
        yield
    finally:
        lock.release()


def run_recipe(recipe: Recipe, run_dir: Path, *, from_stage: str | None = None, until_stage: str | None = None,
               say: Callable[[str], None] | None = None, update: Any = None) -> RunResult:
    """Run every stage of `recipe` that is not already done with the same inputs (up to `until_stage`).

    `update` (a `recipes.update.Update`): then fold a new batch of data in, as a new version of the adapter.
    """
    say = say or (lambda m: console.print(m, highlight=False))
    if update is not None and (from_stage or until_stage):
        raise RunError("--update runs the whole recipe, then the update: leave out --from and --until")
    stages = plan(recipe, run_dir)
    names = [s.name for s in stages]
    for option, stage in (("--from", from_stage), ("--until", until_stage)):
        if stage is not None and stage not in names:
            raise RunError(f"{option} {stage}: this recipe's stages are {', '.join(names)}")
    if until_stage is not None:
        stages = stages[: names.index(until_stage) + 1]
    with _locked(run_dir), _executor(recipe), _library_log(run_dir):
        state = load_state(run_dir)
        state["recipe"] = str(recipe.path)
        if from_stage is not None:
            for name in names[names.index(from_stage):]:
                state["stages"].pop(name, None)
        result = RunResult(run_dir, "done")
        ctx = Context(recipe, run_dir, stages, state, say)
        run_stages(ctx, result)
        if update is not None and result.status == "done":
            from recipes.update import run_update

            run_update(ctx, update, result)
        return result


def run_stages(ctx: Context, result: RunResult) -> RunResult:
    """Run `ctx`'s stages in order, each unless it is fresh, keeping `ctx.state` in RUN/run.json."""
    run_dir, stages, state, say = ctx.run_dir, ctx.stages, ctx.state, ctx.say
    for n, stage in enumerate(stages, 1):
        key = stage.key(run_dir)
        entry = state["stages"].get(stage.name)
        head = f"[bold]\\[{n}/{len(stages)}] {stage.name}[/bold]: {stage.what}"
        if is_fresh(stage, entry, key):
            say(f"{head} [dim](done, skipped)[/dim]")
            result.skipped.append(stage.name)
            continue
        resuming = bool(entry) and entry.get("key") == key
        if not resuming and stage.folder.exists() and stage.folder != run_dir:
            shutil.rmtree(stage.folder)  # its inputs changed: nothing in it is valid any more
        say(f"{head}{' [dim](resuming)[/dim]' if resuming else ''}")
        entry = {"key": key, "status": "running", "started_at": utc_now(),
                 "seconds": entry.get("seconds", 0.0) if resuming else 0.0}
        state["stages"][stage.name] = entry
        _save(run_dir, state)
        t0 = time.perf_counter()
        try:
            outcome = _perform(stage, ctx, resuming)
        finally:
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 2)
            _save(run_dir, state)
        result.ran.append(stage.name)
        if outcome is not None:  # the stage waits for people
            entry["status"] = "waiting"
            _save(run_dir, state)
            result.status, result.message = "waiting", outcome
            return result
        entry.update(status="done", finished_at=utc_now())
        _save(run_dir, state)
    return result


@contextlib.contextmanager
def _library_log(run_dir: Path) -> Iterator[None]:
    """One library log per run (vLLM's and torch's own output, `curate.library_log`): RUN/logs/run.log,
    unless the user named one."""
    if os.environ.get(LOG_ENV):
        yield
        return
    os.environ[LOG_ENV] = str(Path(os.path.abspath(run_dir)) / "logs" / "run.log")
    try:
        yield
    finally:
        os.environ.pop(LOG_ENV, None)


@contextlib.contextmanager
def _executor(recipe: Recipe) -> Iterator[None]:
    """The recipe's executor for every command it runs (their --executor and --ray-* flags read these variables).

    Not part of a stage's key: an executor changes where the work runs, not what it produces.
    """
    wanted = {"SMALLSET_EXECUTOR": recipe.executor, "RAY_ADDRESS": recipe.ray.address,
              "SMALLSET_RAY_WORKERS": None if recipe.ray.workers is None else str(recipe.ray.workers)}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_fresh(stage: Stage, entry: dict | None, key: str) -> bool:
    """Done with the same inputs, its output still there, and (review) no decision still pending."""
    return (bool(entry) and entry.get("status") == "done" and entry.get("key") == key
            and stage.output.exists() and not entry.get("pending"))


def _perform(stage: Stage, ctx: Context, resuming: bool) -> str | None:
    """Run one stage; a string back means 'stop here and tell the user this'."""
    stage.folder.mkdir(parents=True, exist_ok=True)
    if stage.kind == "review":
        from recipes.review_stage import review

        return review(stage, ctx)
    if stage.kind == "decisions":
        from recipes.review_stage import apply_decisions

        apply_decisions(stage)
        return None
    if stage.kind == "promote":
        from recipes.update import promote

        promote(stage, ctx)
        return None
    if stage.kind == "report":
        from recipes.report import write_run_report

        write_run_report(ctx, stage.output)
        return None
    for cmd in stage.commands:
        if stage.kind == "train" and resuming and (stage.output / "checkpoints" / "last").exists():
            cmd = [*cmd, "--resume"]
        run_command(cmd, stage.name)
    return None

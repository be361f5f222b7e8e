"""A recipe as an ordered list of stages, each one command (or a few) with its inputs and output.

Every stage but review and the report is a plain run of a smallset command, the same
one a user would type; the runner only decides the paths. A stage is identified by a
key: the hash of its commands and of the content of its inputs, so a stage reruns
exactly when something it depends on changed, and everything downstream follows
through the content of the files it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from curate import __version__
from curate.manifest import content_hash
from recipes.options import command_args
from recipes.spec import Recipe

BIN = Path(sys.executable).parent
EVAL_TASKS = {"classification": "classification", "exact": "exact", "free_text": "free"}
DEFAULT_REVIEW_ROUTE = "suspects"  # a review section without a route: synthetic rows and rows curation flagged


@dataclass
class Stage:
    name: str
    output: Path
    """What the next stage reads: a file, or a folder (the adapter, the evaluation)."""
    inputs: list[Path]
    commands: list[list[str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    """Settings of a stage the runner performs itself (review, report)."""
    what: str = ""
    kind: str = "command"
    """How the runner performs it: command (its commands), train (commands that resume), review,
    decisions (an ablation variant takes the main run's review decisions), report."""
    recipe_dir: Path | None = None
    """The recipe's folder (absolute), written as RECIPE in the key: the same recipe named by another path,
    or from another folder, is the same stage."""

    @property
    def folder(self) -> Path:
        return self.output.parent if self.output.suffix else self.output

    def key(self, run_dir: Path) -> str:
        """Hash of the commands (run folder written as RUN, the recipe's folder as RECIPE) and of every input's
        content."""
        h = hashlib.blake2b(digest_size=16)
        spec = json.dumps({"stage": self.name, "commands": self.commands, "params": self.params, "smallset": __version__},
                          sort_keys=True, default=str)
        places = {os.path.abspath(run_dir): "RUN", str(run_dir): "RUN"}
        if self.recipe_dir is not None:
            places[str(self.recipe_dir)] = "RECIPE"
        for place in sorted(places, key=len, reverse=True):  # the longer first: one folder may hold the other
            spec = spec.replace(json.dumps(place)[1:-1], places[place])
        h.update(spec.encode())
        for path in self.inputs:
            h.update(digest(path).encode())
        return h.hexdigest()


def digest(path: Path) -> str:
    """Content hash of a file, or of every file in a folder (names and contents; a trainer's checkpoints left out;
    a folder of Parquet shards by its shards, as its manifest hashes it: `curate.manifest.content_hash`)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    return content_hash(path, skip=lambda relative: "checkpoints" in relative.parts)


def tool_commands() -> dict[str, click.Command]:
    """The click commands the recipe's sections map onto (imported lazily: they pull in torch)."""
    from curate.cli import main as curate_cli
    from synth.cli import main as synth_cli
    from train.cli import main as train_cli

    found = {f"curate {name}": curate_cli.get_command(None, name) for name in curate_cli.list_commands(None)}
    found["synth generate"] = synth_cli.commands["generate"]
    found.update({f"train {name}": cmd for name, cmd in train_cli.commands.items()})
    review = curate_cli.commands.get("review")
    if isinstance(review, click.Group):
        found.update({f"curate review {name}": cmd for name, cmd in review.commands.items()})
    return found


def tool_exe(tool: str) -> str:
    """The console script `tool` of this installation (beside the running Python), else `tool` on PATH."""
    exe = BIN / tool
    return str(exe) if exe.exists() else tool


def plan(recipe: Recipe, run_dir: Path) -> list[Stage]:
    """Every stage of `recipe`, in order, with its output under `run_dir`. Validates every option.

    Ablation variants (`eval.ablate`) come after the main training stage: each is the recipe
    without one step or source, sharing the main run's stages up to the first that differs.
    The evaluation then scores the main adapter and every variant's in one engine.
    """
    stages, pool = _pipeline(recipe, run_dir)
    train = next(s for s in stages if s.name == "train")
    curve = next((s.output for s in stages if s.name == "curve"), None)
    variants: dict[str, Path] = {}
    for name in recipe.ablate:
        extra = _variant(recipe, run_dir, name, stages, curve)
        stages.extend(extra)
        variants[f"no-{name}"] = extra[-1].output
    stages.append(_eval_stage(recipe, run_dir, train, pool, variants))
    stages.append(Stage("report", run_dir / "report.html", [s.output for s in stages],
                        params={"recipe": recipe.model_dump(mode="json")}, what="the run report", kind="report"))
    for stage in stages:
        stage.recipe_dir = recipe.resolve(".")
    return stages


def _pipeline(recipe: Recipe, run_dir: Path, *, main: bool = True, main_curve: Path | None = None) -> tuple[list[Stage], Path]:
    """The stages from the sources to the trained adapter, and the k-shot pool (the real rows, else all).

    `main_curve`: planning an ablation variant, the main run's learning curve (which its
    `select --size auto` reads too); the variant has no curve stage of its own.
    """
    cmds = tool_commands()
    path = recipe.path
    stages: list[Stage] = []
    test = recipe.resolve(recipe.data.test)

    def args(command: str, options: dict, where: str, reserved: tuple[str, ...] = ()) -> list[str]:
        return stage_args(cmds, path, command, options, where, reserved)

    parts: list[Path] = []
    if recipe.data.real:
        out = run_dir / "real" / "real.parquet"
        commands = []
        for i, src in enumerate(recipe.data.real):
            options = {"map": src.map, "layout": src.layout, "source": src.source or src.path.stem}
            options = {k: v for k, v in options.items() if v}
            part = out if len(recipe.data.real) == 1 else run_dir / "real" / f"real-{i + 1}.parquet"
            commands.append([tool_exe("curate"), "ingest", str(recipe.resolve(src.path)), "-o", str(part),
                             *args("curate ingest", options, f"data.real.{i}")])
        if len(recipe.data.real) > 1:
            parts_in = [str(run_dir / "real" / f"real-{i + 1}.parquet") for i in range(len(recipe.data.real))]
            commands.append([tool_exe("curate"), "ingest", *parts_in, "-o", str(out)])
        stages.append(Stage("real", out, [recipe.resolve(s.path) for s in recipe.data.real], commands,
                            what="read the real examples"))
        parts.append(out)
    if recipe.data.synth:
        out = run_dir / "synth" / "synth.parquet"
        task = recipe.resolve(recipe.data.synth.task)
        cmd = [tool_exe("synth"), "generate", str(task), "-o", str(out),
               *args("synth generate", recipe.data.synth.options, "data.synth.options")]
        stages.append(Stage("synth", out, [task], [cmd], what="generate synthetic examples with the teacher"))
        parts.append(out)

    current = run_dir / "merge" / "all.parquet"
    stages.append(Stage("merge", current, list(parts),
                        [[tool_exe("curate"), "ingest", *map(str, parts), "-o", str(current)]],
                        what="one dataset from every source"))
    pool = parts[0] if recipe.data.real else current

    curve = recipe.eval.get("curve")
    for i, (step, stage_name) in enumerate(zip(recipe.curate, recipe.step_names())):
        (name, options), = step.items()
        options = dict(options)
        extra: list[str] = []
        inputs = [current]
        if name == "decontaminate":
            extra = ["--against", str(test)]
            inputs.append(test)
        if name == "score":
            options.setdefault("judge", True)
            if recipe.objective.task == "classification" and recipe.objective.labels:
                options.setdefault("labels", recipe.objective.labels)
        if name == "select":  # the size and the label mix follow the objective unless the recipe says
            options.setdefault("size", "auto")
            options.setdefault("metric", recipe.objective.metric)
            options.setdefault("test", str(test))
            if str(options["size"]) == "auto" and curve is not None:
                if main:
                    stages.append(_curve_stage(recipe, run_dir, current, pool))
                curve_json = stages[-1].output if main else main_curve
                options.setdefault("curve", str(curve_json))
                inputs.append(curve_json)
        out = run_dir / stage_name / f"{stage_name}.parquet"
        cmd = [tool_exe("curate"), name, str(current), "-o", str(out), *extra,
               *args(f"curate {name}", options, f"curate.{i}.{name}", reserved=("against",))]
        stages.append(Stage(stage_name, out, inputs, [cmd], what=f"curate {name}"))
        current = out

    if recipe.review is not None:
        out = run_dir / "review" / "accepted.parquet"
        # Without a route, people read what curation could not vouch for (synthetic and flagged rows).
        push_options = {"route": DEFAULT_REVIEW_ROUTE, **recipe.review.push}
        push = args("curate review push", push_options, "review.push", reserved=("name", "key", "workspace"))
        stages.append(Stage("review", out, [current], params={
            "dataset": recipe.review_dataset, "key": recipe.name, "wait": recipe.review.wait, "push": push,
            "workspace": str(recipe.resolve(recipe.review.workspace)) if recipe.review.workspace else None,
            "port": recipe.review.port,
        }, what="people review the routed rows in Argilla", kind="review"))
        current = out

    if main and recipe.data.synth:
        stages.append(_audit_stage(run_dir, current, parts[0] if recipe.data.real else None, args))

    adapter_dir = run_dir / "train"
    stages.append(Stage("train", adapter_dir, [current],
                        [[tool_exe("train"), "lora", str(current), "-o", str(adapter_dir),
                          *args("train lora", recipe.train, "train", reserved=("resume",))]],
                        what="train the LoRA adapter", kind="train"))
    if curve is not None and main and not any(s.name == "curve" for s in stages):
        stages.append(_curve_stage(recipe, run_dir, current, pool))
    return stages, pool


def _audit_stage(run_dir: Path, data: Path, real: Path | None, args) -> Stage:
    """`curate audit` of the training set, its synthetic rows against the real ones (fidelity, privacy),
    before anything trains on it; the run report puts its verdicts beside the objective's.
    A recipe without real rows gets the audit without them (its verdicts read "not run"), and so
    does a training set without synthetic rows: its real rows are REAL's own, not copies of them."""
    out = run_dir / "audit"
    against = ["--against", str(real), "--compare", "synthetic"] if real is not None else []
    cmd = [tool_exe("curate"), "audit", str(data), *against, "--json", str(out / "audit.json"), "-o", str(out / "audit.html"),
           *args("curate audit", {}, "audit")]
    return Stage("audit", out / "audit.json", [data, *([real] if real is not None else [])], [cmd],
                 what="audit the training set: balance, coverage, bias; synthetic fidelity and privacy")


def stage_args(cmds: dict[str, click.Command], path: Path, command: str, options: dict, where: str,
               reserved: tuple[str, ...] = ()) -> list[str]:
    """A recipe section's `options` as `command`'s flags, validated by the command itself (`-o` is the stage's)."""
    if command not in cmds:
        from curate.errors import InputError

        raise InputError(path, f"this installation has no `{command}` command", field=where)
    return command_args(cmds[command], options, where=where, path=path, reserved=reserved + ("output",))


def _eval_options(recipe: Recipe) -> dict[str, Any]:
    """`eval` without the run's own keys (curve, ablate): the options of `train eval`."""
    return {k: v for k, v in recipe.eval.items() if k not in ("curve", "ablate")}


def _objective_args(recipe: Recipe) -> list[str]:
    args = ["--task", EVAL_TASKS[recipe.objective.task]]
    if recipe.objective.labels:
        args += ["--labels", ",".join(recipe.objective.labels)]
    return args


def _curve_stage(recipe: Recipe, run_dir: Path, data: Path, pool: Path) -> Stage:
    """`train curve` on `data` with the recipe's training settings, scored like the verdict."""
    test = recipe.resolve(recipe.data.test)
    out = run_dir / "curve"
    cmds = tool_commands()
    where = "eval.curve"
    options = {**recipe.train, **recipe.eval["curve"]}
    cmd = [tool_exe("train"), "curve", str(data), "--test", str(test), "-o", str(out), "--metric", recipe.objective.metric,
           "--shots-from", str(pool), *_objective_args(recipe),
           *stage_args(cmds, recipe.path, "train curve", options, where, reserved=("test", "metric", "task", "labels", "shots-from"))]
    return Stage("curve", out / "curve.json", [data, test, pool], [cmd],
                 what="learning curve: the metric against the number of training rows")


def _eval_stage(recipe: Recipe, run_dir: Path, train: Stage, pool: Path, variants: dict[str, Path]) -> Stage:
    test = recipe.resolve(recipe.data.test)
    eval_dir = run_dir / "eval"
    objective = recipe.objective
    target = (f"{objective.target.over.replace('_', '')}+{objective.target.value:g}" if objective.target.over
              else f"{objective.target.value:g}")
    options = _eval_options(recipe)
    given = options.pop("shots-from", options.pop("shots_from", None))
    options["shots-from"] = str(recipe.resolve(given) if given else pool)  # one k-shot pool for every adapter of the run
    eval_cmd = [tool_exe("train"), "eval", str(train.output), "--test", str(test), "-o", str(eval_dir),
                "--metric", objective.metric, "--target", target, *_objective_args(recipe),
                *stage_args(tool_commands(), recipe.path, "train eval", options, "eval",
                       reserved=("test", "task", "metric", "target", "labels", "compare"))]
    for name, adapter in variants.items():
        eval_cmd += ["--compare", f"{name}={adapter}"]
    return Stage("eval", eval_dir, [train.output / "adapter", test, *train.inputs, Path(options["shots-from"]),
                                    *(a / "adapter" for a in variants.values())], [eval_cmd],
                 what="score base, k-shot and the adapter" + (" and its ablations" if variants else "")
                      + " on the held-out test set")


def _variant(recipe: Recipe, run_dir: Path, name: str, main: list[Stage], curve: Path | None) -> list[Stage]:
    """The stages of the recipe without `name` that differ from the main run's, under RUN/ablate/no-NAME.

    A variant stage identical to the main stage of the same name (same command once the
    variant's folder reads as the run's) is not repeated: later stages read the main output.
    Where the main run has a review stage, the variant takes the main run's decisions
    (rows people rejected or left pending are left out, corrections applied; a row the main
    run never saw is pending when the routing policy would send it to people) instead of
    sending its own rows to people.
    """
    vdir = run_dir / "ablate" / f"no-{name}"
    variant, _ = _pipeline(recipe.without(name), vdir, main=False, main_curve=curve)
    by_name = {s.name: s for s in main}
    out: list[Stage] = []
    swaps: list[tuple[str, str]] = []

    def swap(text: str) -> str:
        for old, new in swaps:
            text = text.replace(old, new)
        return text

    diverged = False
    for stage in variant:
        commands = [[swap(a) for a in cmd] for cmd in stage.commands]
        inputs = [Path(swap(str(p))) for p in stage.inputs]
        twin = by_name.get(stage.name)
        same = twin is not None and twin.kind == stage.kind and json.dumps(commands).replace(str(vdir), str(run_dir)) == \
            json.dumps(twin.commands) and stage.params == twin.params
        if same and not diverged:
            swaps.append((str(stage.folder), str(twin.folder)))
            continue
        diverged = True
        if stage.kind == "review":
            pulled = by_name["review"].folder / "pulled.parquet"
            stage = Stage(stage.name, stage.output, [*inputs, pulled],
                          params={"decisions": str(pulled), "push": recipe.review.push},
                          what="the main run's review decisions", kind="decisions")
        else:
            stage = Stage(stage.name, stage.output, inputs, commands, stage.params, stage.what, stage.kind)
        stage.name = f"no-{name}:{stage.name}"
        stage.what = f"without {name}: {stage.what}"
        out.append(stage)
    return out

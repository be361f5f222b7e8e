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

    @property
    def folder(self) -> Path:
        return self.output.parent if self.output.suffix else self.output

    def key(self, run_dir: Path) -> str:
        """Hash of the commands (run folder written as RUN) and of every input's content."""
        h = hashlib.blake2b(digest_size=16)
        spec = {"stage": self.name, "commands": self.commands, "params": self.params, "smallset": __version__}
        h.update(json.dumps(spec, sort_keys=True, default=str).replace(str(run_dir), "RUN").encode())
        for path in self.inputs:
            h.update(digest(path).encode())
        return h.hexdigest()


def digest(path: Path) -> str:
    """Content hash of a file, or of every file in a folder (names and contents)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.blake2b(digest_size=16)
        for f in sorted(p for p in path.rglob("*") if p.is_file() and "checkpoints" not in p.parts):
            h.update(str(f.relative_to(path)).encode())
            h.update(content_hash(f).encode())
        return h.hexdigest()
    return content_hash(path) if path.exists() else "missing"


def _commands() -> dict[str, click.Command]:
    """The click commands the recipe's sections map onto (imported lazily: they pull in torch)."""
    from curate.cli import main as curate_cli
    from synth.cli import main as synth_cli
    from train.cli import main as train_cli

    found = {f"curate {name}": cmd for name, cmd in curate_cli.commands.items()}
    found["synth generate"] = synth_cli.commands["generate"]
    found.update({f"train {name}": cmd for name, cmd in train_cli.commands.items()})
    review = curate_cli.commands.get("review")
    if isinstance(review, click.Group):
        found.update({f"curate review {name}": cmd for name, cmd in review.commands.items()})
    return found


def _exe(tool: str) -> str:
    exe = BIN / tool
    return str(exe) if exe.exists() else tool


def plan(recipe: Recipe, run_dir: Path) -> list[Stage]:
    """Every stage of `recipe`, in order, with its output under `run_dir`. Validates every option."""
    cmds = _commands()
    path = recipe.path
    stages: list[Stage] = []
    test = recipe.resolve(recipe.data.test)

    def args(command: str, options: dict, where: str, reserved: tuple[str, ...] = ()) -> list[str]:
        if command not in cmds:
            from curate.errors import InputError

            raise InputError(path, f"this installation has no `{command}` command", field=where)
        return command_args(cmds[command], options, where=where, path=path, reserved=reserved + ("output",))

    parts: list[Path] = []
    if recipe.data.real:
        out = run_dir / "real" / "real.parquet"
        commands = []
        for i, src in enumerate(recipe.data.real):
            options = {"map": src.map, "layout": src.layout, "source": src.source or src.path.stem}
            options = {k: v for k, v in options.items() if v}
            part = out if len(recipe.data.real) == 1 else run_dir / "real" / f"real-{i + 1}.parquet"
            commands.append([_exe("curate"), "ingest", str(recipe.resolve(src.path)), "-o", str(part),
                             *args("curate ingest", options, f"data.real.{i}")])
        if len(recipe.data.real) > 1:
            parts_in = [str(run_dir / "real" / f"real-{i + 1}.parquet") for i in range(len(recipe.data.real))]
            commands.append([_exe("curate"), "ingest", *parts_in, "-o", str(out)])
        stages.append(Stage("real", out, [recipe.resolve(s.path) for s in recipe.data.real], commands,
                            what="read the real examples"))
        parts.append(out)
    if recipe.data.synth:
        out = run_dir / "synth" / "synth.parquet"
        task = recipe.resolve(recipe.data.synth.task)
        cmd = [_exe("synth"), "generate", str(task), "-o", str(out),
               *args("synth generate", recipe.data.synth.options, "data.synth.options")]
        stages.append(Stage("synth", out, [task], [cmd], what="generate synthetic examples with the teacher"))
        parts.append(out)

    current = run_dir / "merge" / "all.parquet"
    stages.append(Stage("merge", current, list(parts),
                        [[_exe("curate"), "ingest", *map(str, parts), "-o", str(current)]],
                        what="one dataset from every source"))

    seen: dict[str, int] = {}
    for i, step in enumerate(recipe.curate):
        (name, options), = step.items()
        seen[name] = seen.get(name, 0) + 1
        stage_name = name if seen[name] == 1 else f"{name}-{seen[name]}"
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
        out = run_dir / stage_name / f"{stage_name}.parquet"
        cmd = [_exe("curate"), name, str(current), "-o", str(out), *extra,
               *args(f"curate {name}", options, f"curate.{i}.{name}", reserved=("against",))]
        stages.append(Stage(stage_name, out, inputs, [cmd], what=f"curate {name}"))
        current = out

    if recipe.review is not None:
        out = run_dir / "review" / "accepted.parquet"
        push = args("curate review push", recipe.review.push, "review.push", reserved=("name", "key", "workspace"))
        stages.append(Stage("review", out, [current], params={
            "dataset": recipe.review_dataset, "key": recipe.name, "wait": recipe.review.wait, "push": push,
            "workspace": str(recipe.resolve(recipe.review.workspace)) if recipe.review.workspace else None,
            "port": recipe.review.port,
        }, what="people review the routed rows in Argilla"))
        current = out

    adapter_dir = run_dir / "train"
    stages.append(Stage("train", adapter_dir, [current],
                        [[_exe("train"), "lora", str(current), "-o", str(adapter_dir),
                          *args("train lora", recipe.train, "train", reserved=("resume",))]],
                        what="train the LoRA adapter"))
    eval_dir = run_dir / "eval"
    objective = recipe.objective
    target = (f"{objective.target.over.replace('_', '')}+{objective.target.value:g}" if objective.target.over
              else f"{objective.target.value:g}")
    eval_cmd = [_exe("train"), "eval", str(adapter_dir), "--test", str(test), "-o", str(eval_dir),
                "--task", EVAL_TASKS[objective.task], "--metric", objective.metric, "--target", target,
                *args("train eval", recipe.eval, "eval", reserved=("test", "task", "metric", "target", "labels"))]
    if objective.labels:
        eval_cmd += ["--labels", ",".join(objective.labels)]
    stages.append(Stage("eval", eval_dir, [adapter_dir / "adapter", test, current], [eval_cmd],
                        what="score base, k-shot and adapter on the held-out test set"))
    stages.append(Stage("report", run_dir / "report.html", [s.output for s in stages],
                        params={"recipe": recipe.model_dump(mode="json")}, what="the run report"))
    return stages

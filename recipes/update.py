"""The update loop: a new batch of data becomes a new version of the adapter, promoted only when it is better.

`smallset run RECIPE --update NEW... --test NEW_TEST` runs the recipe (skipping what is done), then:

1. the recipe's first run becomes version 1 (`RUN/versions/1/`: its training set, adapter, evaluation and
   test set, copied once) and `RUN/current.json` points at it;
2. version N (the next number) gets its own stages under `RUN/versions/N/`, cached and resumable like the
   recipe's (its own `run.json`: a kill -9 at any moment and the same command continues): the new files are
   read like the first real source (`new`); checked for drift against the current version's training set
   (`curate drift`, reported, not a gate: drift is why one retrains); curated with the recipe's steps but
   `select` (or `monitor.curate`), decontaminated against the current training set and every test set;
   reviewed as the recipe's `review` says; added to the current training set (`data`); trained from the base
   or, with `monitor.warm-start`, from the current adapter (`train lora --init-adapter`); evaluated with the
   current adapter in the same engine on every earlier test set and the new one (`train eval --test ...
   --compare current=...`);
3. `promote` decides: the candidate replaces the current adapter only when, on every earlier test set, the
   lower end of the paired 95% interval of (candidate - current) on the objective's metric is above
   -`monitor.tolerance` points, and on the new test set the candidate scores higher. Otherwise the current
   adapter stays, and `version.json` says why. Every version is kept, refused ones too.

A rerun with the same files is the same version (done: nothing runs); other files make the next version.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.atomic import atomic_path, write_text
from recipes.commands import RunError
from recipes.runner import Context, load_state, run_stages, utc_now
from recipes.spec import Recipe
from recipes.stages import Stage, digest, stage_args, tool_commands, tool_exe

CURRENT_FILE = "current.json"
VERSION_FILE = "version.json"
REQUEST_FILE = "update.json"
_PAIRED = ("--test", "-o", "--output", "--compare", "--init-adapter")  # flags of the main commands an update sets itself


@dataclass
class Update:
    """What `smallset run --update` was given: the new batch and the test set written for it."""

    files: list[Path]
    test: Path


def versions_dir(run_dir: Path) -> Path:
    return run_dir / "versions"


def read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON record (run.json, version.json, eval.json, ...), None when it is not there (yet)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def current_version(run_dir: Path) -> int | None:
    found = read_json(run_dir / CURRENT_FILE)
    return int(found["version"]) if found else None


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every decided version's record (`version.json`), oldest first, with `in_use` set on the current one."""
    folder = versions_dir(run_dir)
    if not folder.is_dir():
        return []
    current = current_version(run_dir)
    found = [read_json(p / VERSION_FILE) for p in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))]
    return [{**v, "in_use": v["version"] == current} for v in found if v]


def run_update(ctx, update: Update, result) -> None:
    """Fold `update` into the run in `ctx` (a `recipes.runner.Context` whose stages are all done)."""
    from recipes.report import write_run_report

    run_dir, say = ctx.run_dir, ctx.say
    for path in [*update.files, update.test]:
        if not Path(path).is_file():
            raise RunError(f"--update/--test: {path} does not exist")
    register_first(ctx)
    number = _version_for(run_dir, update, ctx.recipe)
    vdir = versions_dir(run_dir) / str(number)
    request = read_json(vdir / REQUEST_FILE)
    parent = versions_dir(run_dir) / str(request["parent"])
    tests = {**read_json(parent / VERSION_FILE)["tests"], request["test_name"]: request["test"]}
    stages = plan_update(ctx.recipe, ctx.stages, vdir, [Path(f) for f in request["files"]], parent, tests,
                         request["test_name"])
    say(f"[bold]update: version {number}[/bold] (from version {request['parent']}, {len(request['files'])} new file(s), "
        f"new test set {request['test_name']}) in {vdir}")
    run_stages(Context(ctx.recipe, vdir, stages, load_state(vdir), say), result)
    if result.status != "done":
        return
    write_run_report(ctx, run_dir / "report.html")  # the history section reads every version
    decided = read_json(vdir / VERSION_FILE)
    result.message = f"version {number} {decided['status']}: {decided['reason']}"
    if "promote" in result.skipped:  # decided by an earlier run of the same update: say it again
        say(result.message)


def _fingerprint(update: Update) -> str:
    h = hashlib.blake2b(digest_size=16)
    for path in [*update.files, update.test]:
        h.update(Path(path).name.encode())
        h.update(digest(Path(path)).encode())
    return h.hexdigest()


def _version_for(run_dir: Path, update: Update, recipe: Recipe) -> int:
    """The version this update is: the last one again when it came from the same files (to finish it or to
    say it is done), else the next number, its inputs copied in and its request written last."""
    folder = versions_dir(run_dir)
    numbers = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    latest = numbers[-1]
    request = read_json(folder / str(latest) / REQUEST_FILE)
    fingerprint = _fingerprint(update)
    if latest > 1 and request is None:  # killed while its inputs were being copied: start it again
        shutil.rmtree(folder / str(latest))
        return _version_for(run_dir, update, recipe)
    if request is not None and request["fingerprint"] == fingerprint:
        return latest
    if request is not None and not (folder / str(latest) / VERSION_FILE).exists():
        raise RunError(f"version {latest} is unfinished and came from other files ({', '.join(request['sources'])}): "
                       f"run the same command with them to finish it, or remove {folder / str(latest)}")
    number = latest + 1
    vdir = folder / str(number)
    files = []
    for i, path in enumerate(update.files, 1):
        dest = vdir / "inputs" / str(i) / Path(path).name  # the file's own name: `curate ingest` sources rows by it
        _copy(Path(path), dest)
        files.append(str(dest.resolve()))
    test = vdir / "test" / Path(update.test).name
    _copy(Path(update.test), test)
    _write_json(vdir / REQUEST_FILE, {
        "version": number, "parent": current_version(run_dir), "fingerprint": fingerprint, "created_at": utc_now(),
        "sources": [str(Path(p).resolve()) for p in update.files], "files": files,
        "test_source": str(Path(update.test).resolve()), "test": str(test.resolve()), "test_name": f"test-v{number}",
        "warm_start": recipe.monitor.warm_start, "tolerance": recipe.monitor.tolerance,
    })
    return number


def _copy(source: Path, dest: Path, *, skip: tuple[str, ...] = ()) -> None:
    """A file or a folder copied atomically (a kill leaves nothing half-written under `dest`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if source.is_dir():
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(*skip))
        else:
            shutil.copy2(source, tmp)


def register_first(ctx) -> None:
    """Version 1: the recipe's run as it is now (training set, adapter, evaluation, test set), and current.json."""
    from curate.readers import read_records
    from curate.writers import write_records

    vdir = versions_dir(ctx.run_dir) / "1"
    if (vdir / VERSION_FILE).exists():
        return
    by_name = {s.name: s for s in ctx.stages}
    train, evaluation = by_name["train"], by_name["eval"]
    data = vdir / "data" / "train.parquet"
    if not data.exists():
        write_records(read_records(train.inputs[0]).records, data)
    for name in ("adapter", "adapter.manifest.json", "curves.png", "split.json"):
        if (train.output / name).exists() and not (vdir / "train" / name).exists():
            _copy(train.output / name, vdir / "train" / name)
    if not (vdir / "eval").exists():
        _copy(evaluation.output, vdir / "eval")
    test_file = ctx.recipe.resolve(ctx.recipe.data.test)
    test = vdir / "test" / test_file.name
    if not test.exists():
        _copy(test_file, test)
    report = read_json(vdir / "eval" / "eval.json")
    metric = ctx.recipe.objective.metric
    scores = {"test-v1": _interval(report["intervals"]["adapter"][metric])}
    _write_json(vdir / VERSION_FILE, {
        "version": 1, "parent": None, "status": "promoted", "reason": "the recipe's first run",
        "created_at": utc_now(), "metric": metric, "tests": {"test-v1": str(test.resolve())},
        "candidate": scores, "current": {}, "checks": [], "drift": None,
        "rows": {"new": None, "kept": None, "training": read_records(data).records.height},
        "adapter": str((vdir / "train" / "adapter").resolve()),
    })
    _write_json(ctx.run_dir / CURRENT_FILE, {"version": 1, "adapter": str((vdir / "train" / "adapter").resolve()),
                                              "since": utc_now()})


def _interval(found: dict[str, Any]) -> dict[str, float]:
    return {k: found[k] for k in ("value", "low", "high")}


def _without(cmd: list[str], flags: tuple[str, ...] = _PAIRED) -> list[str]:
    """A command line without the given flags and their values."""
    out, skip = [], False
    for arg in cmd:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def update_steps(recipe: Recipe) -> list[tuple[str, dict[str, Any]]]:
    """The curation of a new batch: `monitor.curate`, else the recipe's steps but select; always with a
    decontaminate step (after dedup, else first), which an update points at the current training set and every
    test set."""
    steps = recipe.monitor.curate if recipe.monitor.curate is not None else \
        [s for s in recipe.curate if next(iter(s)) != "select"]
    pairs = [next(iter(s.items())) for s in steps]
    if not any(name == "decontaminate" for name, _ in pairs):
        at = next((i + 1 for i, (name, _) in enumerate(pairs) if name == "dedup"), 0)
        pairs.insert(at, ("decontaminate", {}))
    return pairs


def plan_update(recipe: Recipe, main: list[Stage], vdir: Path, files: list[Path], parent: Path,
                tests: dict[str, str], new_test: str) -> list[Stage]:
    """The stages of one update under `vdir`; the train and eval commands are the recipe's own, re-aimed."""
    cmds = tool_commands()
    by_name = {s.name: s for s in main}
    monitor = recipe.monitor
    previous = parent / "data" / "train.parquet"
    stages: list[Stage] = []

    def args(command: str, options: dict, where: str, reserved: tuple[str, ...] = ()) -> list[str]:
        return stage_args(cmds, recipe.path, command, options, where, reserved)

    first = recipe.data.real[0] if recipe.data.real else None
    read = {"map": monitor.map if monitor.map is not None else (first.map if first else {}),
            "layout": monitor.layout or (first.layout if first else None)}
    new = vdir / "new" / "new.parquet"
    stages.append(Stage("new", new, list(files), [[tool_exe("curate"), "ingest", *map(str, files), "-o", str(new),
                                                   *args("curate ingest", {k: v for k, v in read.items() if v},
                                                         "monitor")]],
                        what="read the new batch"))
    drift = vdir / "drift"
    stages.append(Stage("drift", drift / "drift.json", [new, previous], [[
        tool_exe("curate"), "drift", str(new), "--against", str(previous), "--json", str(drift / "drift.json"),
        "-o", str(drift / "drift.html"), *args("curate drift", monitor.drift, "monitor.drift",
                                               reserved=("against", "json", "strict"))]],
        what="drift of the new batch from the current training set"))
    current = new
    test_paths = [Path(p) for p in tests.values()]
    seen: dict[str, int] = {}
    for i, (name, options) in enumerate(update_steps(recipe)):
        seen[name] = seen.get(name, 0) + 1
        stage_name = name if seen[name] == 1 else f"{name}-{seen[name]}"
        options, extra, inputs = dict(options), [], [current]
        if name == "decontaminate":  # the new rows against what is trained on already and every test set
            extra = [a for p in [previous, *test_paths] for a in ("--against", str(p))]
            inputs += [previous, *test_paths]
        if name == "score":
            options.setdefault("judge", True)
            if recipe.objective.task == "classification" and recipe.objective.labels:
                options.setdefault("labels", recipe.objective.labels)
        if name == "select":
            options.setdefault("metric", recipe.objective.metric)
        out = vdir / stage_name / f"{stage_name}.parquet"
        stages.append(Stage(stage_name, out, inputs, [[
            tool_exe("curate"), name, str(current), "-o", str(out), *extra,
            *args(f"curate {name}", options, f"monitor.curate.{i}.{name}", reserved=("against",))]],
            what=f"curate {name} (new rows)"))
        current = out
    if "review" in by_name:
        review = by_name["review"]
        out = vdir / "review" / "accepted.parquet"
        # The same Argilla dataset, under a key of the version's own: its pull sees its rows only.
        params = {**review.params, "key": f"{review.params['key']}-v{vdir.name}"}
        stages.append(Stage("review", out, [current], params=params, what=review.what, kind="review"))
        current = out
    data = vdir / "data" / "train.parquet"
    stages.append(Stage("data", data, [previous, current],
                        [[tool_exe("curate"), "ingest", str(previous), str(current), "-o", str(data)]],
                        what="the current training set and the new rows"))
    train_dir = vdir / "train"
    main_train = _without(by_name["train"].commands[0])
    train_cmd = [*main_train[:2], str(data), "-o", str(train_dir), *main_train[3:]]
    train_inputs = [data]
    if monitor.warm_start:
        train_cmd += ["--init-adapter", str(parent / "train" / "adapter")]
        train_inputs.append(parent / "train" / "adapter")
    stages.append(Stage("train", train_dir, train_inputs, [train_cmd], what="train the candidate adapter"
                        + (" from the current one" if monitor.warm_start else ""), kind="train"))
    main_eval = _without(by_name["eval"].commands[0])
    eval_dir = vdir / "eval"
    eval_cmd = [*main_eval[:2], str(train_dir), "-o", str(eval_dir), *main_eval[3:],
                *(a for name, path in tests.items() for a in ("--test", f"{name}={path}")),
                "--compare", f"current={parent / 'train'}"]
    stages.append(Stage("eval", eval_dir, [train_dir / "adapter", parent / "train" / "adapter", data,
                                           *test_paths], [eval_cmd],
                        what="score the candidate and the current adapter on every test set"))
    stages.append(Stage("promote", vdir / VERSION_FILE, [eval_dir, drift / "drift.json"], params={
        "version": int(vdir.name), "parent": int(parent.name), "tests": tests, "new_test": new_test,
        "tolerance": monitor.tolerance, "metric": recipe.objective.metric, "warm_start": monitor.warm_start,
        "rows": {"new": str(new), "kept": str(current), "training": str(data)},
    }, what="promote the candidate only if it is not worse on the earlier test sets and better on the new one",
        kind="promote"))
    for stage in stages:
        stage.recipe_dir = recipe.resolve(".")
    return stages


def check_monitor(recipe: Recipe, main: list[Stage], run_dir: Path) -> list[Stage]:
    """Plan an update with placeholder files, so that `smallset check` validates the `monitor` options."""
    folder = versions_dir(run_dir)
    test = recipe.resolve(recipe.data.test)
    return plan_update(recipe, main, folder / "0", [Path("NEW")], folder / "1", {"test-v1": str(test)}, "test-v0")


def decide(report: dict[str, Any], metric: str, tests: dict[str, str], new_test: str,
           tolerance: float) -> tuple[bool, list[dict[str, Any]]]:
    """(promote?, one check per test set): candidate - current with its paired 95% interval, in points.

    On an earlier test set the check passes when the interval's lower end is at least -tolerance (not worse
    beyond the tolerance); on the new one when the candidate scores higher.
    """
    checks = []
    for name in tests:
        section = report["test_sets"][name]
        current_minus = section["differences"]["current-adapter"][metric]  # metric(current) - metric(candidate)
        diff = {"value": -current_minus["value"] * 100, "low": -current_minus["high"] * 100,
                "high": -current_minus["low"] * 100}
        if name == new_test:
            ok, rule = diff["value"] > 0, "better on the new test set"
        else:
            ok, rule = diff["low"] >= -tolerance, f"not worse than {tolerance:g} points on an earlier test set"
        checks.append({"test": name, "rows": section.get("rows"), "rule": rule, "passed": bool(ok),
                       "difference": diff, "new": name == new_test,
                       "candidate": _interval(section["intervals"]["adapter"][metric]),
                       "current": _interval(section["intervals"]["current"][metric])})
    return all(c["passed"] for c in checks), checks


def _reason(promoted: bool, checks: list[dict[str, Any]], metric: str, tolerance: float) -> str:
    def pts(x: float) -> str:
        return f"{x if abs(x) >= 0.05 else 0.0:+.1f}"

    def words(c: dict[str, Any]) -> str:
        d = c["difference"]
        return (f"{c['test']} ({c['rows']} rows): {pts(d['value'])} points of {metric} "
                f"(paired 95% interval {pts(d['low'])} to {pts(d['high'])})")

    if promoted:
        return "promoted: " + "; ".join(("better on the new test set " if c["new"] else
                                          f"not worse beyond {tolerance:g} points on ") + words(c) for c in checks)
    failed = []
    for c in checks:
        if c["passed"]:
            continue
        if c["new"]:
            failed.append(f"not better on the new test set {words(c)}")
        else:
            failed.append(f"may be worse by more than {tolerance:g} points on {words(c)}"
                          + ("" if c["difference"]["value"] < 0 else "; a larger test set or tolerance can tell"))
    return "kept the current adapter: " + "; ".join(failed)


def promote(stage: Stage, ctx) -> None:
    """Decide on the candidate of `stage`'s version; write its version.json, and current.json when it is promoted."""
    from curate.readers import read_records

    p = stage.params
    vdir = stage.output.parent
    report = read_json(vdir / "eval" / "eval.json")
    promoted, checks = decide(report, p["metric"], p["tests"], p["new_test"], p["tolerance"])
    drift = read_json(vdir / "drift" / "drift.json") or {}
    classifier = (drift.get("checks") or {}).get("classifier") or {}
    terms = [t["term"] for t in (drift.get("terms") or {}).get("current", [])[:6]]
    rows = {k: read_records(Path(v)).records.height for k, v in p["rows"].items()}
    adapter = vdir / "train" / "adapter"
    record = {
        "version": p["version"], "parent": p["parent"], "status": "promoted" if promoted else "refused",
        "reason": _reason(promoted, checks, p["metric"], p["tolerance"]), "created_at": utc_now(),
        "metric": p["metric"], "tolerance": p["tolerance"], "warm_start": p["warm_start"], "tests": p["tests"],
        "candidate": {c["test"]: c["candidate"] for c in checks}, "current": {c["test"]: c["current"] for c in checks},
        "checks": checks, "rows": rows, "adapter": str(adapter.resolve()),
        "drift": {"drift": bool(drift.get("drift")), "verdict": drift.get("verdict"), "reasons": drift.get("reasons", []),
                  "auc": classifier.get("value"), "terms": terms},
    }
    _write_json(stage.output, record)
    if promoted:
        _write_json(ctx.run_dir.parent.parent / CURRENT_FILE,
                    {"version": p["version"], "adapter": str(adapter.resolve()), "since": utc_now()})
    colour = "green" if promoted else "yellow"
    ctx.say(f"[{colour}]version {p['version']} {record['status']}[/{colour}]: {record['reason']}")

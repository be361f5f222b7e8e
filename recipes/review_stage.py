"""The review stage of a run: push the routed rows to Argilla, pull what people decided.

The run starts the local review server when it is not running (and leaves it running:
annotators need it after the run ends), unless ARGILLA_API_URL and ARGILLA_API_KEY name
another deployment. Then it pushes (idempotent: a rerun adds only new rows), pulls every
decision made so far, and writes the accepted set:

- rows people accepted or corrected (the correction applied) are kept;
- rows people rejected are dropped, with the reason `review_rejected`;
- rows routed to review and not decided yet: with `wait: true` the run stops and says
  where to annotate; with `wait: false` they are left out of this run's training set
  (reason `review_pending`) and the next run picks up their decisions;
- rows the routing policy did not send to review are accepted as they are.

The stage is done (and skipped by later runs) only once every routed row has a decision.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import polars as pl

from curate.atomic import sidecar, write_text
from curate.drops import make_drops, write_drops
from curate.manifest import Manifest
from curate.readers import read_records
from curate.review.server import DEFAULT_PORT, DEFAULT_WORKSPACE, Workspace, external_deployment
from curate.writers import write_records
from recipes.commands import RunError, run_command
from recipes.stages import DEFAULT_REVIEW_ROUTE, tool_exe

SERVER_START_S = 300.0
OUTCOME = "review_outcome"


def ensure_server(workspace: Path, port: int, say) -> str:
    """The URL of the review server for `workspace`, started in the background if needed."""
    external = external_deployment()
    if external is not None:
        return external.api_url
    ws = Workspace(workspace)
    info = ws.running()
    if info and info.get("ready"):
        return info["url"]
    if info is None:
        ws.root.mkdir(parents=True, exist_ok=True)
        say(f"starting the review server for {workspace} on 127.0.0.1:{port} (it keeps running after this run; "
            f"`curate review stop --workspace {workspace}` stops it)")
    log_path = ws.root / "serve.log"
    started = None
    if info is None:
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            started = subprocess.Popen([tool_exe("curate"), "review", "serve", "--workspace", str(workspace), "--port", str(port)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        info = ws.running()
        if info and info.get("ready"):
            return info["url"]
        if started is not None and started.poll() is not None:  # it gave up: say why, in its own words
            with open(log_path, "rb") as fh:
                fh.seek(start)
                said = fh.read().decode(errors="replace").strip().splitlines()
            reason = said[-1] if said else f"it exited with {started.returncode}"
            raise RunError(f"the review server did not start: {reason.removeprefix('Error: ')} "
                           f"(set `review: {{port: N}}` in the recipe for another port; log: {log_path})")
        time.sleep(1.0)
    raise RunError(f"the review server did not start within {SERVER_START_S:.0f} s; see {log_path}")


def review(stage, ctx) -> str | None:
    """Run the review stage of `ctx`'s recipe; a message back means the run waits for people."""
    params = stage.params
    workspace = Path(params["workspace"]) if params.get("workspace") else DEFAULT_WORKSPACE
    url = ensure_server(workspace, params.get("port") or DEFAULT_PORT, ctx.say)
    where = [] if external_deployment() else ["--workspace", str(workspace)]
    # The recipe's name keys its rows in Argilla, so a rerun (whose input file is the same
    # path) adds only new rows, and two recipes can share one Argilla dataset.
    names = ["--name", params["dataset"], "--key", params["key"]]
    source = stage.inputs[0]
    run_command([tool_exe("curate"), "review", "push", str(source), *names, *where, *params["push"]], "review")
    pulled = stage.folder / "pulled.parquet"
    run_command([tool_exe("curate"), "review", "pull", str(source), "-o", str(pulled), *names, *where], "review")
    return accept(stage, ctx, source, pulled, url)


def accept(stage, ctx, source: Path, pulled: Path, url: str) -> str | None:
    """Write the accepted set from the pulled decisions; a message when the run must wait.

    `curate review pull` returns every row of the input in order; a row it found in
    Argilla has `meta.review.record`, the others were not routed to review.
    """
    params = stage.params
    rows = read_records(pulled).records
    routed = rows["meta"].fill_null("{}").str.json_path_match("$.review.record").is_not_null()
    outcome = pl.when(routed).then(pl.col(OUTCOME)).otherwise(pl.lit(None, dtype=pl.String))
    rows = rows.with_columns(outcome.alias(OUTCOME))
    outcomes = dict(rows.filter(routed).group_by(OUTCOME).len().sort(OUTCOME).iter_rows())
    pending = outcomes.get("pending", 0)
    summary = {"dataset": params["dataset"], "url": url, "routed": int(routed.sum()), "outcomes": outcomes,
               "agreement": _agreement(pulled)}
    write_text(stage.folder / "review.json", json.dumps(summary, indent=2) + "\n")
    if pending and params["wait"]:
        return (f"waiting for review: {pending} of {summary['routed']} routed rows have no decision yet in the "
                f"Argilla dataset '{params['dataset']}' at {url}. Annotate them there, then run the same command again.")
    status = pl.col(OUTCOME)
    kept = rows.filter(status.is_null() | status.is_in(["accepted", "corrected"]))
    dropped = rows.filter(status.is_in(["rejected", "pending"]))
    write_records(kept, stage.output)
    write_drops(make_drops(id=dropped["id"].to_list(),
                           reason=[f"review_{s}" for s in dropped[OUTCOME].to_list()],
                           detail=[_who(m) for m in dropped["meta"].to_list()], step="review"), stage.output)
    manifest = Manifest("smallset review", parameters={"dataset": params["dataset"], "url": url, "wait": params["wait"]})
    manifest.add_input(source, rows=rows.height)
    manifest.add_output(stage.output, rows=kept.height)
    manifest.counts = {"in": rows.height, "out": kept.height, "dropped": dropped.height, "routed": summary["routed"],
                       **{f"review_{k}": v for k, v in outcomes.items()}}
    manifest.write(stage.output)
    if pending:
        ctx.say(f"{pending} routed rows wait for a decision in '{params['dataset']}' at {url}; this run trains "
                "without them and the next run picks up their decisions")
        ctx.state["stages"]["review"]["pending"] = pending
    return None


def _who(meta: str | None) -> str:
    """Who decided what, for a dropped row's detail."""
    try:
        review = json.loads(meta or "{}").get("review", {})
    except ValueError:
        return ""
    votes = review.get("votes") or []
    return ", ".join(f"{v.get('user')}: {v.get('status')}" for v in votes) or review.get("rule", "")


def _agreement(pulled: Path) -> list | None:
    """The agreement per question from pull's report (None before two people answered the same row)."""
    path = sidecar(pulled, "review.json")
    if not path.exists() or not os.path.getsize(path):
        return None
    found = [a for a in json.loads(path.read_text(encoding="utf-8")).get("agreement", []) if a.get("units")]
    return found or None


def apply_decisions(stage) -> None:
    """An ablation variant's review: the main run's decisions applied to the variant's rows.

    A variant must not send its own rows to people, but it must not train on what people
    threw out either: rows the main run's reviewers rejected, or routed and left pending,
    are dropped; corrected rows take the correction. A row the main run never saw (say,
    one a left-out step would have removed) is pending if the routing policy would send it
    to people, as it would be in a real run, and kept otherwise.
    """
    from curate.review.routing import Route, parse_band, route

    source, decisions = stage.inputs[0], Path(stage.params["decisions"])
    rows = read_records(source).records
    pulled = read_records(decisions).records
    routed = pulled.filter(pulled["meta"].fill_null("{}").str.json_path_match("$.review.record").is_not_null())
    decided = {rid: (outcome, i) for i, (rid, outcome) in enumerate(zip(routed["id"], routed[OUTCOME]))}
    push = {str(k).replace("_", "-"): v for k, v in (stage.params.get("push") or {}).items()}
    policy = Route(policy=push.get("route", DEFAULT_REVIEW_ROUTE), score_column=push.get("score-column", "judge_score"),
                   band=parse_band(str(push.get("band", "2.5:3.5"))), fraction=float(push.get("fraction", 0.1)),
                   seed=int(push.get("seed", 0)), where=push.get("where"))
    unseen = rows.filter(~pl.col("id").is_in(list(decided)))
    for rid in route(unseen, policy)["id"].to_list():
        decided[rid] = ("pending", None)
    keep, replaced, dropped, reasons = [], [], [], []
    for i, rid in enumerate(rows["id"].to_list()):
        outcome, j = decided.get(rid, (None, None))
        if outcome in ("rejected", "pending"):
            dropped.append(rid)
            reasons.append(f"review_{outcome}")
        elif outcome == "corrected":
            replaced.append(j)
        else:
            keep.append(i)
    common = [c for c in rows.columns if c in routed.columns]
    kept = pl.concat([rows[keep].select(common), routed[replaced].select(common)], how="vertical_relaxed")
    write_records(kept, stage.output)
    write_drops(make_drops(id=dropped, reason=reasons, step="review",
                           detail="decided in the main run's review"), stage.output)
    manifest = Manifest("smallset review (main run's decisions)", parameters={"decisions": str(decisions)})
    manifest.add_input(source, rows=rows.height)
    manifest.add_input(decisions, rows=pulled.height)
    manifest.add_output(stage.output, rows=kept.height)
    manifest.counts = {"in": rows.height, "out": kept.height, "dropped": len(dropped), "corrected": len(replaced)}
    manifest.write(stage.output)

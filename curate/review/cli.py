"""`curate review`: run the Argilla server where annotators review records."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from pathlib import Path

import click

from curate.console import SmallsetGroup, console
from curate.report_options import json_option
from curate.review.routing import POLICIES
from curate.review.server import (
    DEFAULT_API_WORKERS,
    DEFAULT_ARGILLA_WORKSPACE,
    DEFAULT_PORT,
    DEFAULT_WORKSPACE,
    ReviewServer,
    ReviewServerError,
    add_user,
    external_deployment,
    stop_workspace,
)

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _progress(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


workspace_option = click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKSPACE,
    show_default=True,
    help="Folder for the server's database, search index, owner credentials, logs and pid file.",
)


@click.group("review", cls=SmallsetGroup, context_settings={"help_option_names": ["-h", "--help"]})
def review() -> None:
    """Review records with annotators in Argilla (a local server, or the one in ARGILLA_API_URL).

    `serve` runs argilla-server 2.8 with its web UI on 127.0.0.1, with an embedded
    search engine and Redis from its own virtualenv: no Docker, no Elasticsearch.
    """


@review.command()
def setup() -> None:
    """Create the Argilla server's virtualenv in the smallset cache (once; `serve` does it too).

    \b
    Example:
      curate review setup
    """
    from curate.review.server_env import ensure_server_env

    env = ensure_server_env(_progress)
    _progress(f"Argilla server environment: {env.root}")


@review.command()
@workspace_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the API and web UI on 127.0.0.1.")
@click.option("--api-workers", type=click.IntRange(1, 16), default=DEFAULT_API_WORKERS, show_default=True,
              help="API processes sharing the port: one stores a push's batch while another answers the next "
                   "request.")
def serve(workspace: Path, port: int, api_workers: int) -> None:
    """Run the Argilla server and web UI until Ctrl-C (or `curate review stop`).

    The first start creates an owner user with a random password and API key,
    prints them once and keeps them in WORKSPACE/owner.json (mode 0600).
    With ARGILLA_API_URL and ARGILLA_API_KEY set, that deployment is used and
    nothing is started.

    \b
    Example:
      curate review serve --workspace runs/review --port 6900
    """
    external = external_deployment()
    if external is not None:
        _progress(f"using the Argilla deployment at {external.api_url} (ARGILLA_API_URL and ARGILLA_API_KEY "
                  "are set); nothing to start")
        return
    server = ReviewServer(workspace=workspace, port=port, progress=_progress, api_workers=api_workers)
    # Until serve_forever() takes over, SIGTERM/SIGHUP (`curate review stop`) interrupt the start cleanly.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        server.start()
    except KeyboardInterrupt:
        _progress("interrupted; the review server is stopped")
        sys.exit(130)
    _progress(f"open {server.url} and sign in; Ctrl-C or `curate review stop` to stop")
    sys.exit(server.serve_forever())


@review.command()
@workspace_option
def stop(workspace: Path) -> None:
    """Stop the server that `serve` runs for WORKSPACE.

    \b
    Example:
      curate review stop --workspace runs/review
    """
    if stop_workspace(workspace):
        _progress(f"stopped the review server of {workspace}")
    else:
        _progress(f"no review server runs for {workspace}")


@review.group()
def users() -> None:
    """Manage the people who review."""


@users.command("add")
@click.argument("name")
@workspace_option
@click.option("--role", type=click.Choice(["annotator", "admin", "owner"]), default="annotator", show_default=True)
@click.option("--argilla-workspace", "argilla_workspaces", multiple=True, default=[DEFAULT_ARGILLA_WORKSPACE],
              show_default=True, help="Argilla workspace the user joins (repeatable).")
def add(name: str, workspace: Path, role: str, argilla_workspaces: tuple[str, ...]) -> None:
    """Create user NAME with a random password, printed once (on stdout).

    \b
    Example:
      curate review users add alice --role annotator --workspace runs/review
    """
    if not _USERNAME.match(name):
        raise click.BadParameter("letters, digits, '_', '.', '-' (starting with a letter or digit)", param_hint="NAME")
    external = external_deployment()
    if external is not None:
        password = _add_user_remote(external, name, role, list(argilla_workspaces))
    else:
        password = add_user(workspace, name, role=role, workspaces=list(argilla_workspaces), progress=_progress)
    _progress(f"created the {role} {name!r} in {', '.join(argilla_workspaces)}; the password is shown once:")
    click.echo(password)


def _add_user_remote(deployment, name: str, role: str, workspaces: list[str]) -> str:
    import secrets

    import argilla as rg

    client = rg.Argilla(api_url=deployment.api_url, api_key=deployment.api_key)
    if client.users(name) is not None:
        raise ReviewServerError(f"a user named {name!r} already exists at {deployment.api_url}")
    password = secrets.token_urlsafe(12)
    user = rg.User(username=name, password=password, role=role, client=client).create()
    for workspace_name in workspaces:
        workspace = client.workspaces(workspace_name) or rg.Workspace(name=workspace_name, client=client).create()
        workspace.add_user(user)
    return password


# --------------------------------------------------------------------------- push, pull, status

argilla_workspace_option = click.option(
    "--argilla-workspace", default=DEFAULT_ARGILLA_WORKSPACE, show_default=True,
    help="Argilla workspace that holds the review datasets.")


@review.command()
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@workspace_option
@argilla_workspace_option
@click.option("--name", help="Argilla dataset to create or reuse (default: the key).")
@click.option("--key", help="Names DATASET in the Argilla record ids (default: its file stem). Pull with the same key.")
@click.option("--route", "policy", type=click.Choice(POLICIES), default="all", show_default=True,
              help="Which rows go to review.")
@click.option("--score-column", default="judge_score", show_default=True, help="Score that --route borderline reads.")
@click.option("--band", default="2.5:3.5", show_default=True, help="LOW:HIGH score band for --route borderline.")
@click.option("--fraction", type=float, default=0.1, show_default=True, help="Share of rows for --route audit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --route audit sample.")
@click.option("--where", help="SQL condition over the columns (polars), e.g. \"judge_score < 3 AND source = 'x'\".")
@click.option("--overlap", type=click.IntRange(1, 50),
              help="Submissions a record needs to be complete (Argilla's min_submitted; new datasets: 1).")
@click.option("--vectors/--no-vectors", default=True, show_default=True,
              help="Send embeddings for similarity search in the UI.")
@click.option("--embedder", help="Embedding model spec (env SMALLSET_EMBEDDER).")
@click.option("--batch-size", type=click.IntRange(1, 500), default=500, show_default=True)
@click.option("--ask-decision", is_flag=True,
              help="Classification rows: ask accept/reject besides the label (default: the label alone; Discard "
                   "rejects).")
def push(dataset: Path, workspace: Path, argilla_workspace: str, name: str | None, key: str | None, policy: str,
         score_column: str, band: str, fraction: float, seed: int, where: str | None, overlap: int | None,
         vectors: bool, embedder: str | None, batch_size: int, ask_decision: bool) -> None:
    """Send DATASET's rows (all, or those a routing policy picks) to an Argilla dataset for review.

    Pushing again adds only rows that are not there yet, so an interrupted push is
    finished by running it again. Classification rows show their text and one label
    question; chat rows the conversation, the response, accept/reject, a rating and
    the corrected response. Data with both goes to NAME-classification and NAME-chat.

    \b
    Examples:
      curate review push scored.parquet --overlap 2
      curate review push scored.parquet --route borderline --band 2.5:3.5
      curate review push scored.parquet --route audit --fraction 0.05 --seed 1
      curate review push all.parquet --route filter --where "origin = 'synthetic' OR judge_score < 3"
    """
    from curate.review.client import connect
    from curate.review.push import PushOptions, push as run_push
    from curate.review.routing import Route, parse_band

    options = PushOptions(
        name=name, key=key, argilla_workspace=argilla_workspace,
        route=Route(policy=policy, score_column=score_column, band=parse_band(band), fraction=fraction, seed=seed,
                    where=where),
        overlap=overlap, vectors=vectors, embedder=embedder, batch_size=batch_size, ask_decision=ask_decision,
    )
    conn = connect(workspace)
    with _records_bar("pushing") as bar:
        reports = run_push(dataset, conn, options, progress=_progress, bar=bar)
    for report in reports:
        for line in report.changed:
            _progress(f"changed: {line}")
        for line in report.notes:
            _progress(f"note: {line}")
        verb = "created" if report.created else "reused"
        _progress(
            f"{verb} {report.workspace}/{report.dataset}: {report.pushed} new records, {report.already} already there "
            f"({report.routed} of {report.rows} rows routed, {report.layout} layout{', vectors' if report.vectors else ''}"
            f"{f', {report.duplicate_ids} repeated ids sent once' if report.duplicate_ids else ''}); "
            f"review at {report.dataset_url}"
        )


@review.command()
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write DATASET with its review outcomes (.parquet or .jsonl).")
@workspace_option
@argilla_workspace_option
@click.option("--name", help="Argilla dataset to read (default: the key).")
@click.option("--key", help="The key DATASET was pushed with (default: its file stem).")
@click.option("--min-votes", type=click.IntRange(1, 50), default=1, show_default=True,
              help="Decisions a row needs before it gets an outcome; fewer leave it pending.")
@click.option("--on-tie", type=click.Choice(["reject", "pending"]), default="reject", show_default=True,
              help="What a tie between keep and reject votes gives.")
def pull(dataset: Path, output: Path, workspace: Path, argilla_workspace: str, name: str | None, key: str | None,
         min_votes: int, on_tie: str) -> None:
    """Write DATASET back with each row's review outcome: accepted, rejected, corrected or pending.

    Submitted and discarded responses are decisions (a discard rejects); drafts are not.
    Several annotators per record: a majority decides, and the agreement per question
    (Krippendorff's alpha) is printed and written to OUTPUT's .review.json.

    \b
    Examples:
      curate review pull scored.parquet -o reviewed.parquet
      curate filter reviewed.parquet --where "review_outcome <> 'rejected'" -o kept.parquet
    """
    from curate.review.client import connect
    from curate.review.pull import PullOptions, pull as run_pull

    conn = connect(workspace)
    with console.status("reading responses"):
        report = run_pull(dataset, output, conn,
                          PullOptions(name=name, key=key, argilla_workspace=argilla_workspace, min_votes=min_votes,
                                      on_tie=on_tie))
    _print_pull(report)


def _print_pull(report) -> None:
    from rich.table import Table

    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in report.outcomes.items())
    _progress(f"{report.output}: {report.rows} rows: {outcomes}")
    if report.pending:
        _progress("pending: " + ", ".join(f"{n} {why}" for why, n in report.pending.items()))
    if report.annotators:
        _progress("responses: " + "; ".join(
            f"{user} " + ", ".join(f"{n} {status}" for status, n in counts.items())
            for user, counts in report.annotators.items()))
    if any(a.units for a in report.agreement):
        table = Table(title="agreement between annotators", title_justify="left")
        for column in ("question", "scale", "records", "pairs agreeing", "Krippendorff's alpha"):
            table.add_column(column)
        for a in report.agreement:
            alpha = f"{a.alpha:.3f}" if a.alpha is not None else f"- ({a.note})"
            pairwise = f"{a.pairwise:.0%}" if a.pairwise is not None else "-"
            table.add_row(a.question, a.level, str(a.units), pairwise, alpha)
        console.print(table)
        c = report.conflicts
        _progress(f"conflicts: {c['records']} records ({c['resolved_by_majority']} resolved by majority, "
                  f"{c['ties']} ties); rule: {report.rule}")
    for note in report.notes:
        _progress(f"note: {note}")
    _progress(f"report: {report.report_file}")


@review.command()
@workspace_option
@click.option("--argilla-workspace", help="Only this Argilla workspace (default: all you can see).")
@click.option("--name", help="Only this Argilla dataset.")
@json_option("the progress (one object per dataset, in a list)")
def status(workspace: Path, argilla_workspace: str | None, name: str | None, json_path: Path | None) -> None:
    """Review progress per dataset and per annotator.

    \b
    Example:
      curate review status --name support-tickets --json
    """
    import json

    from curate.review.client import connect
    from curate.report_options import echo_json, to_stdout
    from curate.review.status import status as run_status

    found = run_status(connect(workspace), argilla_workspace, name)
    if json_path is not None:
        entries = [s.to_dict() for s in found]
        if to_stdout(json_path):
            echo_json(entries)
        else:
            from curate.atomic import write_text

            write_text(json_path, json.dumps(entries, indent=2) + "\n")
            _progress(f"wrote {json_path}")
        return
    if not found:
        _progress("no review datasets yet; push one with `curate review push DATASET`")
        return
    from rich.console import Console
    from rich.table import Table

    out = Console()
    for entry in found:
        done = f"{entry.completed}/{entry.total}" + (f" ({entry.completed / entry.total:.0%})" if entry.total else "")
        table = Table(title=f"{entry.workspace}/{entry.dataset}: {done} completed, {entry.pending} pending "
                            f"(complete at {entry.overlap} submitted)", title_justify="left")
        for column in ("annotator", "submitted", "discarded", "draft"):
            table.add_column(column, justify="right" if column != "annotator" else "left")
        for user, counts in entry.annotators.items():
            table.add_row(user, str(counts["submitted"]), str(counts["discarded"]), str(counts["draft"]))
        if not entry.annotators:
            table.add_row("(no responses yet)", "", "", "")
        out.print(table)


@contextlib.contextmanager
def _records_bar(what: str):
    """A rich progress bar over records; yields `bar(total) -> advance(n)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"{what}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        def bar(total: int):
            task = progress.add_task(what, total=total)
            return lambda n: progress.advance(task, n)

        yield bar


main = review  # `python -m curate.review.cli` and tests run the group on its own

if __name__ == "__main__":
    review()

"""`curate review`: run the Argilla server where annotators review records."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import click

from curate.console import SmallsetGroup, console
from curate.review.server import (
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
    """Create the Argilla server's virtualenv in the smallset cache (once; `serve` does it too)."""
    from curate.review.server_env import ensure_server_env

    env = ensure_server_env(_progress)
    _progress(f"Argilla server environment: {env.root}")


@review.command()
@workspace_option
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the API and web UI on 127.0.0.1.")
def serve(workspace: Path, port: int) -> None:
    """Run the Argilla server and web UI until Ctrl-C (or `curate review stop`).

    The first start creates an owner user with a random password and API key,
    prints them once and keeps them in WORKSPACE/owner.json (mode 0600).
    With ARGILLA_API_URL and ARGILLA_API_KEY set, that deployment is used and
    nothing is started.
    """
    external = external_deployment()
    if external is not None:
        _progress(f"using the Argilla deployment at {external.api_url} (ARGILLA_API_URL and ARGILLA_API_KEY "
                  "are set); nothing to start")
        return
    server = ReviewServer(workspace=workspace, port=port, progress=_progress)
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
    """Stop the server that `serve` runs for WORKSPACE."""
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
    """Create user NAME with a random password, printed once (on stdout)."""
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


main = review  # `python -m curate.review.cli` and tests run the group on its own

if __name__ == "__main__":
    review()

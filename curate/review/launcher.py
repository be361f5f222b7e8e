"""Runs argilla-server pieces with the smallset search engine registered.

This file runs inside the server's own virtualenv (see `server_env.py`), started
as `python -P launcher.py COMMAND ...` so that its folder is not put on
`sys.path`: it imports only the standard library and `argilla_server`, and loads
`search_engine.py` beside it by path. Commands:

* `api --host H --port P`: the API server and web UI (uvicorn);
* `worker [--num-workers N]`: the rq worker that runs Argilla's background jobs;
* `prepare`: migrates the database; then, when stdin holds {"owner": USER}, creates
  that user (see `create-user`) and prints one JSON line {"created": bool};
* `create-user`: reads a user {"username", "password", "role", "api_key",
  "workspaces", "first_name"} as JSON on stdin (secrets never appear in a command
  line), creates it and prints one JSON line {"created": bool};
* `argilla ARGS...`: Argilla's own CLI (`database migrate`, `search-engine reindex`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

ENGINE_MODULE = "smallset_review_search_engine"


def register_engine() -> None:
    """Import search_engine.py (beside this file) so that it registers itself with argilla_server."""
    if ENGINE_MODULE in sys.modules:
        return
    path = Path(__file__).with_name("search_engine.py")
    spec = importlib.util.spec_from_file_location(ENGINE_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[ENGINE_MODULE] = module
    spec.loader.exec_module(module)
    os.environ.setdefault("ARGILLA_SEARCH_ENGINE", module.ENGINE_NAME)


def run_api(host: str, port: int) -> None:
    import uvicorn
    from argilla_server._app import create_server_app

    uvicorn.run(create_server_app(), host=host, port=port, access_log=False, log_level="warning")


def prepare() -> None:
    """Migrate the database, then create the owner given on stdin (one process: imports are slow)."""
    import asyncio

    from argilla_server.cli.database.migrate import migrate_db

    text = sys.stdin.read().strip()
    spec = json.loads(text) if text else {}
    migrate_db(revision="head")
    if spec.get("owner"):
        print(json.dumps(asyncio.run(_create_user(spec["owner"]))), flush=True)


def run_worker(num_workers: int) -> None:
    import multiprocessing

    # rq's worker pool forks its workers, which inherit the registered engine; newer
    # Pythons default to forkserver on Linux, which would lose it.
    multiprocessing.set_start_method("fork", force=True)
    from argilla_server.cli.worker import worker

    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE

    worker(queues=[DEFAULT_QUEUE.name, HIGH_QUEUE.name], num_workers=num_workers)


async def _create_user(spec: dict) -> dict:
    from argilla_server.api.schemas.v1.users import UserCreate
    from argilla_server.cli.database.users.utils import get_or_new_workspace
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User

    async with AsyncSessionLocal() as session:
        existing = await accounts.get_user_by_username(session, spec["username"])
        if existing is not None:
            return {"created": False}
        checked = UserCreate(
            first_name=spec.get("first_name") or spec["username"],
            username=spec["username"],
            role=spec["role"],
            password=spec["password"],
        )
        workspaces = [await get_or_new_workspace(session, name) for name in spec.get("workspaces") or []]
        extra = {"api_key": spec["api_key"]} if spec.get("api_key") else {}
        user = await User.create(
            session,
            first_name=checked.first_name,
            username=checked.username,
            role=checked.role,
            password_hash=accounts.hash_password(checked.password),
            workspaces=workspaces,
            **extra,
        )
        return {"created": user is not None}


def create_user() -> None:
    import asyncio

    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_create_user(spec))), flush=True)


def run_argilla_cli(args: list[str]) -> None:
    from argilla_server.cli import app

    sys.argv = ["argilla_server", *args]
    app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="launcher.py")
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=6900)
    worker = commands.add_parser("worker")
    worker.add_argument("--num-workers", type=int, default=1)
    commands.add_parser("prepare")
    commands.add_parser("create-user")
    argilla = commands.add_parser("argilla")
    argilla.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)

    register_engine()
    if options.command == "api":
        run_api(options.host, options.port)
    elif options.command == "worker":
        run_worker(options.num_workers)
    elif options.command == "prepare":
        prepare()
    elif options.command == "create-user":
        create_user()
    else:
        run_argilla_cli(options.args)


if __name__ == "__main__":
    main()

"""Runs argilla-server pieces with the smallset search engine registered.

This file runs inside the server's own virtualenv (see `server_env.py`), started
as `python -P launcher.py COMMAND ...` so that its folder is not put on
`sys.path`: it imports only the standard library and `argilla_server`, and loads
`search_engine.py` beside it by path. Commands:

* `api --host H --port P [--workers N]`: the API server and web UI (uvicorn, N processes);
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


def speed_up_settings_parsing() -> None:
    """Build each pydantic TypeAdapter that argilla-server's models use once, not once per call.

    `Question.parsed_settings` and `MetadataProperty.parsed_settings` build a new
    `TypeAdapter` (a pydantic schema) at every call, and a bulk upsert calls them for
    every suggestion and metadata value of every record: about 90% of the time of a
    500-record upsert on this machine. The adapters are immutable, so one per type serves.
    """
    from argilla_server.models import database

    original = database.TypeAdapter
    if getattr(original, "_smallset_cached", False):
        return
    adapters: dict[int, object] = {}

    def cached(tp, *args, **kwargs):
        if args or kwargs:
            return original(tp, *args, **kwargs)
        adapter = adapters.get(id(tp))
        if adapter is None:
            adapter = adapters[id(tp)] = (original(tp), tp)  # keep tp alive: its id stays its own
        return adapter[0]

    cached._smallset_cached = True
    database.TypeAdapter = cached


def skip_unheard_record_events() -> None:
    """Build a bulk upsert's record events only when an enabled webhook listens for them.

    argilla-server builds one webhook event per upserted record (a dataset query with
    five eager loads, and a query for the enabled webhooks), then drops it when no
    webhook is enabled: seven queries per record for nothing. This asks once per bulk
    and, when no enabled webhook subscribes to a record event, skips the loop; with one,
    upstream's code runs unchanged.
    """
    from argilla_server.bulk.records_bulk import UpsertRecordsBulk
    from argilla_server.contexts import webhooks
    from argilla_server.webhooks.v1.enums import RecordEvent

    original = UpsertRecordsBulk._notify_upsert_record_events
    if getattr(original, "_smallset_checked", False):
        return
    record_events = {event.value for event in RecordEvent}

    async def notify(self, records):
        listening = [w for w in await webhooks.list_enabled_webhooks(self._db) if record_events & set(w.events or [])]
        if listening:
            await original(self, records)

    notify._smallset_checked = True
    UpsertRecordsBulk._notify_upsert_record_events = notify


def upsert_bulk_suggestions_as_executemany() -> None:
    """Write a bulk upsert's suggestions with one prepared statement on SQLite.

    Upstream upserts them as one INSERT with a VALUES row per suggestion and
    RETURNING: for 500 records with four suggestions that is 18,000 bound
    parameters that SQLAlchemy compiles afresh at every call, about 0.8 s of the
    1.6 s a 500-record upsert took on this machine. The same upsert (ON CONFLICT
    of record and question: update value, score, agent, type and updated_at) sent
    as an executemany is compiled once and cached. Nothing reads what upstream
    returned here: the records and their suggestions are loaded again before they
    are indexed. Other databases (a Postgres URL) keep upstream's code.
    """
    from datetime import datetime

    from argilla_server.bulk.records_bulk import CreateRecordsBulk
    from argilla_server.models import Suggestion
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    original = CreateRecordsBulk._upsert_records_suggestions
    if getattr(original, "_smallset_executemany", False):
        return
    table = Suggestion.__table__

    async def upsert(self, records_and_suggestions):
        if self._db.bind.dialect.name != "sqlite":
            return await original(self, records_and_suggestions)
        rows = [
            {**suggestion.model_dump(), "record_id": record.id}
            for record, suggestions in records_and_suggestions
            for suggestion in suggestions or []
        ]
        if rows:
            statement = sqlite_insert(table)
            updates = {column: statement.excluded[column] for column in Suggestion.__upsertable_columns__}
            statement = statement.on_conflict_do_update(
                index_elements=[table.c.record_id, table.c.question_id],
                set_={**updates, "updated_at": datetime.utcnow()},
            )
            await self._db.execute(statement, rows)
        return []

    upsert._smallset_executemany = True
    CreateRecordsBulk._upsert_records_suggestions = upsert


def freeze_startup_objects() -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    argilla-server's modules, pydantic models and SQLAlchemy mappers are about 300k
    objects that live as long as the process. Python's full collection walks them
    all, about 250 ms on this machine, and under a stream of requests it runs every
    few requests: that was the p95 of every list and search request. Frozen objects
    are still freed by reference counting; only their cycle detection stops, which
    they never needed (`gc.freeze`, made for this).
    """
    import gc

    gc.collect()
    gc.freeze()


def run_api(host: str, port: int, workers: int) -> None:
    """Serve the API and web UI from `workers` processes that share one listening socket.

    One process serves one request at a time as far as Python's CPU is concerned,
    and a 500-record bulk upsert holds it for about a second: a second process
    answers the next batch, or the UI, meanwhile (SQLite serializes the writes).
    The processes are forked after the app is built and patched, so each has the
    same engine, patches and session-signing secret; they are in this process's
    group, which `curate review stop` signals, and each dies with this one.
    """
    import contextlib
    import signal
    import socket

    import uvicorn
    from argilla_server._app import create_server_app

    app = create_server_app()
    freeze_startup_objects()
    listener = socket.create_server((host, port), backlog=2048)
    forked = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            forked = []
            _die_with_parent()
            break
        forked.append(pid)
    # uvicorn re-raises the SIGTERM it stopped on once it is done: exit through Python, so
    # that the first process waits for the others (they got the same signal) and none is
    # left behind as a zombie.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # uvicorn.run(fd=...) would take the socket for a Unix one and leave Nagle's algorithm on.
        uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning")).run(sockets=[listener])
    finally:
        for pid in forked:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _die_with_parent() -> None:
    """In a forked API process: get SIGTERM when the first one ends (Linux), and never outlive it."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


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

    freeze_startup_objects()
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
    api.add_argument("--workers", type=int, default=1)
    worker = commands.add_parser("worker")
    worker.add_argument("--num-workers", type=int, default=1)
    commands.add_parser("prepare")
    commands.add_parser("create-user")
    argilla = commands.add_parser("argilla")
    argilla.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)

    register_engine()
    if options.command in ("api", "worker", "argilla"):
        speed_up_settings_parsing()
        skip_unheard_record_events()
        upsert_bulk_suggestions_as_executemany()
    if options.command == "api":
        run_api(options.host, options.port, max(1, options.workers))
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

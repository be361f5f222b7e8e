"""Runs argilla-server pieces with the smallset search engine registered and smallset's patches applied.

This file runs inside the server's own virtualenv (see `server_env.py`), started
as `python -P launcher.py COMMAND ...` so that its folder is not put on
`sys.path`: it imports only the standard library, and loads by path
`search_engine.py` and `patches.py` beside it (every use of argilla-server's own
code, behind a check of the version it was written for) and `../processes.py`.
On another argilla-server, or when a patched function changed, every command
stops with a message that names the patch and the versions. Commands:

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

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    """Import the module at `path` as `name` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


patches = _load("smallset_review_patches", HERE / "patches.py")
processes = _load("smallset_processes", HERE.parent / "processes.py")


def register_engine() -> None:
    """Import search_engine.py (beside this file) so that it registers itself with argilla_server."""
    module = _load("smallset_review_search_engine", HERE / "search_engine.py")
    os.environ.setdefault("ARGILLA_SEARCH_ENGINE", module.ENGINE_NAME)


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


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str) -> list[str]:
    """The Host headers the API answers: the names of the address it serves, plus SMALLSET_REVIEW_HOSTS.

    A browser page on another site can reach a loopback server through DNS rebinding (its own
    name, resolved to 127.0.0.1); such a request carries that foreign name as Host and is refused.
    A server bound beyond loopback (`--host`) also answers this machine's own names; a reverse
    proxy's name goes in SMALLSET_REVIEW_HOSTS (comma-separated).
    """
    import socket

    names = list(LOOPBACK_NAMES)
    if host not in ("127.0.0.1", "localhost", "::1"):
        names += [host, socket.gethostname(), socket.getfqdn()]
    names += [h.strip() for h in os.environ.get("SMALLSET_REVIEW_HOSTS", "").split(",") if h.strip()]
    return sorted(set(names))


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
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = TrustedHostMiddleware(patches.create_app(), allowed_hosts=allowed_hosts(host))
    freeze_startup_objects()
    listener = socket.create_server((host, port), backlog=2048)
    forked = []
    first = os.getpid()
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            forked = []
            processes.die_with_parent(signal.SIGTERM, parent=first)  # never outlive the first process
            break
        forked.append(pid)
    # uvicorn re-raises the SIGTERM it stopped on once it is done: exit through Python, so
    # that the first process waits for the others (they got the same signal) and none is
    # left behind as a zombie.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # uvicorn.run(fd=...) would take the socket for a Unix one and leave Nagle's algorithm on.
        uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", timeout_graceful_shutdown=10)
                       ).run(sockets=[listener])
    finally:
        # Stopped alone (its parent died, and the kernel signalled only this process): pass it on,
        # or the others would keep serving and this one would wait for them forever.
        for pid in forked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in forked:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def prepare() -> None:
    """Migrate the database, then create the owner given on stdin (one process: imports are slow)."""
    import asyncio

    text = sys.stdin.read().strip()
    spec = json.loads(text) if text else {}
    patches.migrate_database()
    if spec.get("owner"):
        print(json.dumps(asyncio.run(patches.create_user(spec["owner"]))), flush=True)


def run_worker(num_workers: int) -> None:
    import multiprocessing

    # rq's worker pool forks its workers, which inherit the registered engine; newer
    # Pythons default to forkserver on Linux, which would lose it.
    multiprocessing.set_start_method("fork", force=True)
    patches.run_worker(num_workers, imported=freeze_startup_objects)


def create_user() -> None:
    import asyncio

    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(patches.create_user(spec))), flush=True)


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

    try:
        patches.require_version()  # before the engine imports argilla_server's interface
        register_engine()
        if options.command in ("api", "worker", "argilla"):
            patches.apply_all()
    except patches.PatchError as exc:
        sys.exit(f"smallset: {exc}")
    if options.command == "api":
        run_api(options.host, options.port, max(1, options.workers))
    elif options.command == "worker":
        run_worker(options.num_workers)
    elif options.command == "prepare":
        prepare()
    elif options.command == "create-user":
        create_user()
    else:
        patches.run_cli(options.args)


if __name__ == "__main__":
    main()

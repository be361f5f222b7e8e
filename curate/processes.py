"""Children that never outlive their parent: the kernel's parent-death signal (Linux).

A server's children (Redis, the API, the worker), a recipe stage's command and the API
server's forked processes must not keep running, holding ports and files, once the process
that started them is gone, even when it was SIGKILLed and had no chance to stop them.

This module imports only the standard library: the review server's launcher loads it by
path inside Argilla's own virtualenv.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
try:  # looked up once here, not in a child between fork and exec, where loading a library may hang
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM, *, parent: int | None = None) -> bool:
    """Ask the kernel to send this process `sig` when its parent dies; exit now if it already has.

    Call it in the child: as `preexec_fn` of `subprocess.Popen` (between fork and exec; the
    setting survives exec), or right after `os.fork()`. `parent` is the pid that must still
    be the parent, read before the fork (`functools.partial(die_with_parent, parent=os.getpid())`):
    a parent that died between the fork and this call sent no signal, and this check catches
    it. Without `parent`, the parent as seen at the call is taken, which leaves that window open.

    The kernel watches the thread that forked, not the whole parent process: start children
    from a thread that lives as long as they should (the main thread).
    Returns False where the kernel has no such signal (not Linux): the caller must then stop
    its children itself.
    """
    expected = os.getppid() if parent is None else parent
    armed = _prctl is not None and _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    if os.getppid() != expected:  # the parent died before the signal was armed: no signal will come
        os._exit(128 + int(sig))
    return armed


GUARD_ENV = "SMALLSET_GUARD"
"""Set in the environment of a guarded process and so inherited by every descendant it starts."""

_WATCHDOG = r"""
import os, signal, sys, time
token = sys.argv[1]
def marked():
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if token.encode() in fh.read().split(b"\0"):
                    yield int(entry)
        except OSError:
            continue
def reap(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(marked()):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(True for _ in marked()):
            time.sleep(0.1)
    os._exit(0)
signal.signal(signal.SIGTERM, reap)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the guarded process; its death is what counts
sys.stdout.write("armed\n"); sys.stdout.flush()
while True:
    signal.pause()
"""


def guard_descendants() -> bool:
    """Make every process this one starts from now on die with it, even those a library starts itself.

    vLLM's engine core and workers are spawned by vLLM, out of reach of `die_with_parent`; after
    a SIGKILL of the command they would keep gigabytes and a port. So this marks the environment
    (inherited by all descendants) and starts a watchdog that the kernel signals when this process
    dies (`die_with_parent`); the watchdog then stops every process carrying the mark. Once per
    process; returns False where there is no /proc or parent-death signal (not Linux).
    """
    global _guard
    if _guard is not None:
        return True
    if _prctl is None or not os.path.isdir("/proc"):
        return False
    import functools
    import subprocess
    import sys
    import uuid

    token = f"{GUARD_ENV}={os.getpid()}-{uuid.uuid4().hex}"
    os.environ[GUARD_ENV] = token.split("=", 1)[1]
    watchdog = subprocess.Popen(
        [sys.executable, "-I", "-c", _WATCHDOG, token], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != GUARD_ENV},  # the watchdog is not one of the marked
        preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, parent=os.getpid()),
    )
    watchdog.stdout.readline()  # its handler is installed: from here on the guard holds
    _guard = watchdog
    return True


_guard = None


def watchdog_pid() -> int | None:
    """The guard's watchdog (it lives as long as this process), or None when unguarded."""
    return _guard.pid if _guard is not None else None


__all__ = ["GUARD_ENV", "die_with_parent", "guard_descendants", "watchdog_pid"]

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


__all__ = ["die_with_parent"]

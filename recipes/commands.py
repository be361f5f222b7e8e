"""A stage's commands: each one a child process that shows its output and dies with the runner.

The runner and the review stage both run smallset's own commands this way; it lives here so
that neither imports the other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path

from curate.errors import SmallsetError
from curate.processes import die_with_parent


class RunError(SmallsetError):
    """A stage failed; the message names it and how to continue."""


def run_command(cmd: list[str], stage: str) -> None:
    """One command, its output on the terminal; it dies with the runner (no orphan keeps writing)."""
    proc = subprocess.Popen(cmd, preexec_fn=functools.partial(die_with_parent, parent=os.getpid()))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)  # the child got the same Ctrl-C; let it save its progress
        raise
    if code != 0:
        shown = " ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd))
        raise RunError(f"stage '{stage}' failed: `{shown}` exited with {code}; fix the cause and run again "
                       "(finished stages are kept)")

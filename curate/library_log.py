"""Library noise goes to a log file, not the console: vLLM's start-up, its engine processes, warnings.

A person running `smallset run` or `train eval` wants the stage lines and the progress bars;
vLLM, torch and Triton write notices, deprecation warnings and C++ warnings (some from the
engine-core process vLLM spawns, which Python logging cannot reach) to the same terminal.
`to_log_file()` points file descriptor 2 at the log while a library starts, so whatever it and the
processes it spawns write there lands in the file; the console gets it back afterwards. The
engine's processes keep writing to the log for as long as they live, and the libraries' loggers
(vLLM's shutdown and per-request notices, transformers' warnings) stay pointed at it afterwards.

Where: `$SMALLSET_LOG_FILE` (the recipe runner sets one per stage: RUN/logs/STAGE.log), else
the smallset cache's `logs/COMMAND.log`; appended, each block headed with the time and command.
`--verbose` on any smallset CLI (or `SMALLSET_VERBOSE=1`) leaves everything on the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_ENV = "SMALLSET_LOG_FILE"
VERBOSE_ENV = "SMALLSET_VERBOSE"
# Libraries whose loggers write to the console from their own handlers, during start-up and after it.
LIBRARY_LOGGERS = ("vllm", "transformers", "peft", "torch")
_streams: dict[Path, TextIO] = {}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def _set_verbose(ctx, param, value: bool) -> None:
    if value:  # through the environment, the setting reaches every command a run starts
        os.environ[VERBOSE_ENV] = "1"


def verbose_option(function):
    """`--verbose` on a CLI group: the libraries' own output stays on the console."""
    import click

    return click.option("--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
                        help=f"Show the libraries' own output (vLLM, torch) on the console instead of the log "
                             f"file (${LOG_ENV}, else the cache's logs/); also {VERBOSE_ENV}=1.")(function)


def log_file() -> Path:
    """This command's library log."""
    if os.environ.get(LOG_ENV):
        return Path(os.environ[LOG_ENV]).expanduser()
    from curate.models import cache_dir

    return cache_dir() / "logs" / f"{Path(sys.argv[0]).name or 'smallset'}.log"


@contextlib.contextmanager
def to_log_file(what: str) -> Iterator[Path | None]:
    """Inside the block, everything written to stderr (this process's and its children's) goes to the log.

    Yields the log's path, or None when verbose (nothing redirected)."""
    if verbose():
        yield None
        return
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "ab", buffering=0)
    except OSError:  # no writable log: keep the console as it is rather than fail the command
        yield None
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"\n--- {stamp} {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}: {what}\n".encode())
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    _route_loggers(path)
    try:
        yield path
    finally:
        _route_loggers(path)  # the handlers a library set up inside the block
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


def _route_loggers(path: Path) -> None:
    """Point the libraries' console handlers at the log for the rest of the command.

    vLLM's handler writes to stdout by default and keeps a reference to the console's stream, so
    moving file descriptor 2 alone does not reach what it logs after start-up; its formatting stays."""
    stream = _streams.get(path)
    if stream is None or stream.closed:
        stream = _streams[path] = open(path, "a", buffering=1, encoding="utf-8")
    for name in LIBRARY_LOGGERS:
        if name not in logging.Logger.manager.loggerDict:
            continue
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and _on_console(handler.stream):
                handler.setStream(stream)


def _on_console(stream) -> bool:
    """A terminal stream (or a log's, from an earlier block); not one a test harness captures logs in."""
    if stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) or stream in _streams.values():
        return True
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):  # StringIO and the like
        return False

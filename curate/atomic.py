"""Atomic writes: a reader sees the old file or the new one, never half of one.

Everything is written to a temporary file in the destination's folder (same file
system, so `os.replace` is atomic), flushed and fsynced, then renamed. The temporary's
name carries the writer's process id, so that the next write of the same destination
removes what a killed writer (kill -9) left behind, and never a live writer's.

A folder (a dataset of shards) is written the same way, every file in it fsynced, and
swapped with the old one in one step where Linux can (`renameat2` with RENAME_EXCHANGE);
elsewhere the old one is moved aside first, so that a kill in between leaves no
output rather than half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from curate.errors import InputError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it over `dest` on success.

    Works for files and folders. On any exception the temporary is removed and
    `dest` is left untouched.
    """
    dest = Path(dest)
    check_parents(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    target = tmp / (dest.name + suffix)
    try:
        yield target
        _fsync_tree(target)
        if dest.is_dir() and not dest.is_symlink() and target.is_dir():
            if not _exchange(target, dest):  # then the old folder is in `target`, removed with `tmp`
                # os.replace cannot replace a non-empty folder: move the old one aside first.
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".old", dir=dest.parent))
                os.replace(dest, old / "x")
                os.replace(target, dest)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(target: Path) -> None:
    """Flush a written file, or every file of a written folder and the folder itself, to disk."""
    found = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else []
    for file in found:
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    if target.is_dir():
        _fsync_dir(target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`): a reader of `b` finds the old folder
    or the new one, never none. False where the system or its file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Remove the temporaries of `dest` whose writer is gone (killed mid-write); return what was removed."""
    removed = []
    for leftover in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        pid = leftover.name[len(dest.name) + 2:].split(".", 1)[0]
        if not (leftover.suffix in (".tmp", ".old") and pid.isdigit()) or _alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_parents(dest: str | os.PathLike[str]) -> None:
    """A folder to create where a file stands: say so, rather than fail in mkdir with FileExistsError."""
    dest = Path(dest)
    for parent in dest.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(dest, f"cannot create it: {parent} is a file, not a folder")
            return


def sidecar(output: str | os.PathLike[str], kind: str) -> Path:
    """A file that belongs to `output`: `data.parquet` -> `data.parquet.<kind>` (its manifest, drops, rejects).

    The whole name is kept, so `x.parquet` and `x.jsonl` in one folder keep separate manifests,
    drops and journals (with the suffix cut, both would claim `x.manifest.json`).
    """
    output = Path(output)
    return output.with_name(f"{output.name}.{kind}")


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

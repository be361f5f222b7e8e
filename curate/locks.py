"""Exclusive locks between processes on a file (flock): one writer of a cache entry, one server
per review workspace, one run per recipe folder.

The kernel drops a lock when the process that holds it dies, however it dies, so a crash never
leaves a stale lock behind; the lock file itself stays, and its content means nothing. A lock
belongs to one open file, so two `FileLock`s on one path exclude each other even inside one
process (what `is_locked` relies on to see this process's own server).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from curate.errors import SmallsetError


class LockHeldError(SmallsetError):
    """A non-blocking lock was asked for while another process (or another `FileLock`) holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} is held by another process")


class FileLock:
    """An exclusive lock on `path` (created with its folder if missing), held until `release`.

    `with FileLock(path):` waits for the lock; `blocking=False` raises `LockHeldError` at once
    instead, for callers that must not queue behind another process (a second server on the
    same workspace, a second run of the same recipe). `acquire()` and `release()` serve a lock
    that lives longer than one block, such as a running server's.
    """

    def __init__(self, path: str | os.PathLike[str], *, blocking: bool = True, mode: int = 0o644) -> None:
        self.path = Path(path)
        self.blocking = blocking
        self.mode = mode
        """Permission bits of a lock file this lock creates (before the umask)."""
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        if self._fd is not None:
            raise RuntimeError(f"the lock on {self.path} is already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeldError(self.path) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file drops it); safe to call when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether someone (another process, or a `FileLock` of this one) holds the lock on `path`.

    A probe: it creates nothing, and a missing lock file means unlocked.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock
    return False


__all__ = ["FileLock", "LockHeldError", "is_locked"]

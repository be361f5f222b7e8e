"""The generation journal: results appended durably as they arrive, keyed for resume.

Each finished sample is one JSON line, flushed and fsynced per batch. A process
killed mid-write leaves at most one torn last line, which `load` cuts off; every
complete line is kept, and a key is never written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn by a kill mid-write
                try:
                    entry = json.loads(raw)
                except json.JSONDecodeError:
                    break
                self.entries.setdefault(entry["key"], entry)
                good_end += len(raw)
        if good_end != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def append(self, entries: Iterable[dict[str, Any]]) -> None:
        fresh = [e for e in entries if e["key"] not in self.entries]
        if not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in fresh).encode()
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for e in fresh:
            self.entries[e["key"]] = e

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

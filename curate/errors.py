"""Errors a user can act on: each one names the file, the line or row, and the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SmallsetError(Exception):
    """Base class for errors that the CLIs print without a traceback."""


@dataclass
class InputError(SmallsetError):
    """Bad input data. `line` is 1-based; `unit` says whether it counts lines, rows or records."""

    path: Path | str | None
    reason: str
    line: int | None = None
    field: str | None = None
    unit: str = "line"  # "line", "row" or "record": what `line` counts

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __reduce__(self):
        """Pickled by its fields, so that it crosses process and Ray task boundaries as itself."""
        return (type(self), (self.path, self.reason, self.line, self.field, self.unit))

    @property
    def where(self) -> str:
        parts = [str(self.path) if self.path is not None else "<input>"]
        if self.line is not None:
            parts.append(f"{self.unit} {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class ModelNotAvailableError(SmallsetError):
    """A model could not be found locally and the hub is not reachable."""

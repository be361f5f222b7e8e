"""Reading the YAML files users write (recipes, task specs, rubrics), with errors that name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from curate.errors import InputError


def read_yaml(path: str | Path, kind: str) -> Any:
    """The parsed content of `path`; a missing file or bad YAML is an InputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no such {kind} file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise InputError(path, f"not valid YAML: {reason}", line=None if mark is None else mark.line + 1) from None

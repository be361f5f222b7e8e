"""A real labelled text corpus for tests, built offline from text written by others.

The first paragraph of every public docstring of a few standard-library and numpy
modules, labelled by what the module is about. The labels are clean (a function's
module is a fact), the classes are naturally imbalanced, and some boundaries are
genuinely ambiguous (a `math` function and a `numpy.linalg` one can read alike), which
is what a label checker must not mistake for noise.
"""

from __future__ import annotations

import inspect
import re

import numpy as np

# label -> objects whose public members' docstrings belong to it
_SOURCES = {
    "linear_algebra": ["numpy.linalg"],
    "fourier": ["numpy.fft"],
    "random": ["random.Random", "numpy.random.Generator"],
    "math": ["math", "cmath", "statistics"],
    "strings": ["str", "bytes", "string", "textwrap"],
    "files": ["os.path", "shutil", "pathlib.Path", "glob", "tempfile"],
    "time": ["datetime.datetime", "datetime.date", "datetime.timedelta", "time", "calendar"],
}
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    return __builtins__[dotted] if isinstance(__builtins__, dict) else getattr(__builtins__, dotted)


def _first_paragraph(doc: str) -> str | None:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    paragraphs = [p for p in paragraphs if not _SIGNATURE.match(" ".join(p.split()))]
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    return text if len(text.split()) >= 4 else None


def docstring_corpus() -> list[dict[str, str]]:
    """Rows `{"text", "label"}`, one per distinct docstring paragraph, in a fixed order."""
    rows, seen = [], set()
    for label, sources in _SOURCES.items():
        for dotted in sources:
            owner = _resolve(dotted)
            for name in sorted(dir(owner)):
                if name.startswith("_"):
                    continue
                doc = getattr(getattr(owner, name, None), "__doc__", None)
                text = _first_paragraph(doc) if isinstance(doc, str) else None
                if text and text not in seen:
                    seen.add(text)
                    rows.append({"text": text[:400], "label": label})
    return rows


def flip_labels(rows: list[dict[str, str]], share: float, seed: int = 0) -> tuple[list[dict[str, str]], set[int]]:
    """A copy of `rows` with `share` of the labels changed to another label; returns it and the flipped indices."""
    rng = np.random.default_rng(seed)
    labels = sorted({r["label"] for r in rows})
    flipped = set(rng.choice(len(rows), size=int(round(share * len(rows))), replace=False).tolist())
    out = []
    for i, row in enumerate(rows):
        if i in flipped:
            others = [lab for lab in labels if lab != row["label"]]
            row = {**row, "label": others[int(rng.integers(len(others)))]}
        out.append(dict(row))
    return out, flipped

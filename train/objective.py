"""The objective chosen before any data was collected, and its verdict on an evaluation.

An objective is a metric and a target for the adapter, written the way a recipe would:

    accuracy >= 0.85          target "0.85" (or "85%")
    accuracy >= k-shot + 30   target "+30", "kshot+30", "+30 points over kshot"
    rouge_l  >= base + 5      target "base+5", "+5 over base"

Metrics are fractions in [0, 1]; a relative target is in points (1 point = 0.01), and
a bare number above 1 is read as a percentage ("85" = 0.85).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from train.errors import TrainError

REFERENCES = {"base": "base", "zeroshot": "base", "kshot": "kshot"}
CONTENDER_NAMES = {"base": "base zero-shot", "kshot": "base k-shot", "adapter": "adapter"}
_REF = r"(base|zero-?shot|k-?shot)"
_RELATIVE = re.compile(
    rf"^(?:{_REF}\s*)?\+\s*(\d+(?:\.\d+)?)\s*(?:points?|pts?|pp|%)?(?:\s*(?:over|above|vs\.?)\s*{_REF})?$", re.IGNORECASE
)
_ABSOLUTE = re.compile(r"^(\d+(?:\.\d+)?)\s*(%)?$")


@dataclass(frozen=True)
class Target:
    value: float
    """The threshold (absolute), or the margin over the reference (relative), as a fraction."""
    reference: str | None = None
    """None for an absolute threshold, else the contender the margin is over: "base" or "kshot"."""

    def describe(self) -> str:
        if self.reference is None:
            return f">= {self.value:.4g}"
        return f">= {CONTENDER_NAMES[self.reference]} + {self.value * 100:.4g} points"


def parse_target(text: str | float) -> Target:
    """Read a target: an absolute threshold or "+N points" over k-shot (default) or base."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    raw = str(text).strip()
    if m := _RELATIVE.match(raw):
        before, points, after = m.groups()
        refs = {REFERENCES[r.lower().replace("-", "")] for r in (before, after) if r}
        if len(refs) > 1:
            raise TrainError(f"target {raw!r} names two references")
        return Target(float(points) / 100, refs.pop() if refs else "kshot")
    if m := _ABSOLUTE.match(raw):
        value = float(m.group(1))
        value = value / 100 if m.group(2) or value > 1 else value
        if value > 1:
            raise TrainError(f"target {raw!r} is above 100%")
        return Target(value)
    raise TrainError(
        f"cannot read the target {raw!r}: give a threshold (0.85 or 85%) or a margin in points over "
        "k-shot or base (+30, kshot+30, base+5, '+30 points over kshot')"
    )


@dataclass(frozen=True)
class Objective:
    metric: str
    target: Target

    @classmethod
    def parse(cls, metric: str, target: str | float) -> Objective:
        return cls(metric, parse_target(target))

    def check_metric(self, available: tuple[str, ...]) -> None:
        if self.metric not in available:
            raise TrainError(f"the objective's metric {self.metric!r} is not measured for this task; choose one of {', '.join(available)}")

    def verdict(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Whether the adapter meets the target, given each contender's metrics ({"base": {...}, ...})."""
        actual = results["adapter"][self.metric]
        base = 0.0 if self.target.reference is None else results[self.target.reference][self.metric]
        required = base + self.target.value
        passed = actual >= required - 1e-12
        text = (f"{'PASS' if passed else 'FAIL'}: adapter {self.metric} {actual:.4f} "
                f"{'>=' if passed else '<'} {required:.4f} (target {self.metric} {self.target.describe()}"
                + (f" = {base:.4f} + {self.target.value:.4f})" if self.target.reference else ")"))
        return {
            "metric": self.metric, "target": asdict(self.target), "required": required, "actual": actual,
            "margin": actual - required, "passed": passed, "text": text,
        }

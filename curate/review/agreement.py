"""Inter-annotator agreement per question: Krippendorff's alpha, with the raw agreement beside it.

Krippendorff's alpha (the `krippendorff` package) handles any number of
annotators, missing answers and nominal or ordinal scales, which is what an
overlap set in Argilla produces: not every annotator sees every record. Only
records with two or more answers count. When every answer is the same, alpha
is undefined (no variation to agree on); it is reported as null with the
reason, and the raw pairwise agreement (share of agreeing annotator pairs)
still says how often people agreed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np


@dataclass
class Agreement:
    question: str
    level: str  # "nominal" or "ordinal"
    units: int  # records with two or more answers
    pairwise: float | None  # share of annotator pairs, over those records, that gave the same answer
    alpha: float | None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def agreement(question: str, answers: list[dict[str, Any]], level: str = "nominal",
              domain: list[Any] | None = None) -> Agreement:
    """`answers`: per record, annotator -> answer (None: no answer)."""
    import krippendorff

    units = [{user: value for user, value in unit.items() if value is not None} for unit in answers]
    units = [unit for unit in units if len(unit) >= 2]
    if not units:
        return Agreement(question, level, 0, None, None, "no record has answers from two annotators")
    pairs = [a == b for unit in units for a, b in combinations(list(unit.values()), 2)]
    pairwise = sum(pairs) / len(pairs)
    coders = sorted({user for unit in units for user in unit})
    if level == "ordinal":
        values = sorted({value for unit in units for value in unit.values()} | set(domain or []))
    else:
        values = sorted({value for unit in units for value in unit.values()}, key=repr)
    code = {value: i for i, value in enumerate(values)}
    data = np.full((len(coders), len(units)), np.nan)
    row_of = {user: i for i, user in enumerate(coders)}
    for j, unit in enumerate(units):
        for user, value in unit.items():
            data[row_of[user], j] = code[value]
    if len({value for unit in units for value in unit.values()}) < 2:
        return Agreement(question, level, len(units), pairwise, None, "every answer is the same: alpha is undefined")
    alpha = krippendorff.alpha(reliability_data=data, value_domain=list(range(len(values))),
                               level_of_measurement=level)
    return Agreement(question, level, len(units), pairwise, float(alpha))

"""Coverage: spread N samples over the task's axes instead of echoing the seeds.

When N covers the full cross product of the axes, every combination is used
(N // P or N // P + 1 times). When it does not, each axis is balanced on its own:
every value of every axis appears N / len(values) times, give or take one, and the
values are paired at random. Both plans depend only on the task and the seed, so
a resumed run plans exactly the same samples.
"""

from __future__ import annotations

import itertools
import random


def plan(axes: dict[str, list[str]], n: int, seed: int = 0) -> list[dict[str, str]]:
    """One dict of axis values per sample, deterministic for (axes, n, seed)."""
    if not axes:
        return [{} for _ in range(n)]
    rng = random.Random(seed)
    names = list(axes)
    product = list(itertools.product(*(axes[a] for a in names)))
    if n >= len(product):
        picks: list[tuple[str, ...]] = []
        while len(picks) < n:
            block = product[:]
            rng.shuffle(block)
            picks.extend(block)
        return [dict(zip(names, combo)) for combo in picks[:n]]
    columns = []
    for name in names:
        columns.append(_balanced(axes[name], n, rng))
    return [dict(zip(names, combo)) for combo in zip(*columns)]


def _balanced(values: list[str], n: int, rng: random.Random) -> list[str]:
    """n values where each appears n // k or n // k + 1 times, in random order."""
    base = values * (n // len(values))
    extra = rng.sample(values, n - len(base))
    column = base + extra
    rng.shuffle(column)
    return column

"""Identity terms (gender, age, nationality, religion) in swappable pairs: one list for every check that needs them.

`curate audit` asks whether identity terms are associated with labels; `train eval`'s
counterfactual check swaps them in test inputs ("he" -> "she", "Christian" -> "Muslim")
and counts how often an answer flips. Both read the same term set, so a user's list
(`--terms FILE`) means the same thing in both. A term file is YAML, one key per group,
each a list of pairs (a two-item list, or "a/b"):

    gender: [[he, she], [man, woman], husband/wife]
    religion: [Christian/Muslim]

A group's terms are the union of its pairs. A swap replaces every term by its partner in
one pass (so "he and she" becomes "she and he"), keeping the case of the word it
replaces. A term in two pairs swaps to its partner in the first one: "her" is both "his"
and "him" in English, and the default list makes it "his", the commoner reading in
requests ("her account"). Matching is on whole words, case-insensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import InputError

GROUPS: dict[str, list[tuple[str, str]]] = {
    "gender": [
        ("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("man", "woman"), ("men", "women"),
        ("boy", "girl"), ("boys", "girls"), ("male", "female"), ("father", "mother"), ("dad", "mum"),
        ("son", "daughter"), ("husband", "wife"), ("brother", "sister"), ("uncle", "aunt"), ("nephew", "niece"),
        ("boyfriend", "girlfriend"), ("gentleman", "lady"), ("gentlemen", "ladies"), ("mr", "mrs"), ("sir", "madam"),
        ("king", "queen"), ("grandfather", "grandmother"),
    ],
    "age": [
        ("young", "old"), ("younger", "older"), ("youngest", "oldest"), ("youth", "elderly"), ("teenager", "pensioner"),
        ("teenagers", "pensioners"), ("student", "retiree"), ("students", "retirees"), ("junior", "senior"),
        ("kid", "grandparent"), ("millennial", "boomer"),
    ],
    "nationality": [
        ("American", "Mexican"), ("British", "Indian"), ("German", "Turkish"), ("French", "Nigerian"),
        ("Canadian", "Pakistani"), ("Australian", "Chinese"), ("Italian", "Brazilian"), ("Swedish", "Polish"),
        ("Irish", "Filipino"), ("Japanese", "Egyptian"), ("Spanish", "Vietnamese"), ("Dutch", "Moroccan"),
    ],
    "religion": [
        ("Christian", "Muslim"), ("Christians", "Muslims"), ("Jewish", "Hindu"), ("Jew", "Hindu"), ("Jews", "Hindus"),
        ("Catholic", "Buddhist"), ("Protestant", "Sikh"), ("church", "mosque"), ("synagogue", "temple"),
        ("Bible", "Quran"), ("Christmas", "Eid"), ("atheist", "believer"),
    ],
}
"""The default term set: group -> swap pairs."""


@dataclass(frozen=True)
class TermSet:
    """Identity terms by group, in swappable pairs; `source` names the file they came from (None: the default)."""

    groups: dict[str, list[tuple[str, str]]]
    source: str | None = None
    _pattern: Any = field(default=None, compare=False, repr=False)

    @property
    def terms(self) -> dict[str, list[str]]:
        """Every group's terms, each once, in the order the pairs name them."""
        return {g: list(dict.fromkeys(t for pair in pairs for t in pair)) for g, pairs in self.groups.items()}

    def swaps(self) -> dict[str, tuple[str, str]]:
        """Lower-cased term -> (its partner as written, the group); a term in two pairs keeps its first partner."""
        out: dict[str, tuple[str, str]] = {}
        for group, pairs in self.groups.items():
            for a, b in pairs:
                out.setdefault(a.lower(), (b, group))
                out.setdefault(b.lower(), (a, group))
        return out

    def pattern(self) -> re.Pattern:
        """One case-insensitive pattern for every term, longest first, on whole words."""
        if self._pattern is None:
            words = sorted(self.swaps(), key=len, reverse=True)
            body = "|".join(re.escape(w) for w in words) or r"(?!x)x"
            object.__setattr__(self, "_pattern", re.compile(rf"(?<!\w)({body})(?!\w)", re.IGNORECASE))
        return self._pattern

    def find(self, text: str) -> list[tuple[str, str]]:
        """(term as written, group) for every identity term in `text`, in order."""
        swaps = self.swaps()
        return [(m.group(0), swaps[m.group(0).lower()][1]) for m in self.pattern().finditer(text)]

    def swap(self, text: str) -> tuple[str, list[str]]:
        """`text` with every term replaced by its partner, and the groups that were swapped (empty: no term)."""
        swaps = self.swaps()
        groups: list[str] = []

        def replace(match: re.Match) -> str:
            partner, group = swaps[match.group(0).lower()]
            groups.append(group)
            return _same_case(match.group(0), partner)

        return self.pattern().sub(replace, text), list(dict.fromkeys(groups))


def _same_case(word: str, partner: str) -> str:
    if len(word) > 1 and word.isupper():
        return partner.upper()
    if word[:1].isupper():
        return partner[:1].upper() + partner[1:]
    return partner if partner[:1].isupper() else partner.lower()  # proper nouns keep their capital


DEFAULT = TermSet(GROUPS)


def load_terms(path: str | Path | None) -> TermSet:
    """The term set in a YAML file (see the module's docstring); None gives the default set."""
    from curate.yaml_files import read_yaml

    if path is None:
        return DEFAULT
    data = read_yaml(path, "identity-term")
    if not isinstance(data, dict) or not data:
        raise InputError(path, "expected a mapping of groups to lists of term pairs, e.g. 'gender: [[he, she]]'")
    groups: dict[str, list[tuple[str, str]]] = {}
    for group, pairs in data.items():
        if not isinstance(pairs, list) or not pairs:
            raise InputError(path, "expected a non-empty list of term pairs", field=str(group))
        groups[str(group)] = [_pair(path, f"{group}.{k}", item) for k, item in enumerate(pairs)]
    return TermSet(groups, str(path))


def _pair(path: str | Path, where: str, item: Any) -> tuple[str, str]:
    if isinstance(item, str):
        item = item.split("/")
    if (not isinstance(item, list) or len(item) != 2
            or not all(isinstance(t, str) and t.strip() for t in item) or item[0].strip().lower() == item[1].strip().lower()):
        raise InputError(path, f"expected a pair of two different terms ([a, b] or 'a/b'), got {item!r}", field=where)
    return item[0].strip(), item[1].strip()

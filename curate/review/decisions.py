"""From annotators' responses to one outcome per row, with a majority rule for conflicts.

Each submitted or discarded response is a vote (drafts are not decisions):

* discarded, or `decision = reject`: the row should go;
* submitted otherwise: the row stays, as the annotator left it: their
  corrected response and label when they changed them (the questions are
  pre-filled with the originals, so an untouched answer is no correction).

Majority rule: the row stays when more votes keep it than reject it, goes when
more reject it, and a tie goes (or stays pending, with `on_tie="pending"`).
Among the votes that keep it, the final response and label are the ones most
of them proposed; a tie there keeps the original. The outcome is then
`rejected`, `corrected` (the final response or label differs from the
original), `accepted`, or `pending` (fewer votes than `min_votes`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ACCEPTED, REJECTED, CORRECTED, PENDING = "accepted", "rejected", "corrected", "pending"
OUTCOMES = (ACCEPTED, REJECTED, CORRECTED, PENDING)

# Values a hand-made decision question may use.
KEEP_VALUES = {"accept", "accepted", "yes", "keep", "good", "ok", "approve", "approved", "correct", "true", "1"}
DROP_VALUES = {"reject", "rejected", "no", "drop", "bad", "discard", "wrong", "false", "0", "remove"}


def same_text(a: Any, b: Any) -> bool:
    """Equal up to whitespace (the UI may add or trim some)."""
    return " ".join(str(a or "").split()) == " ".join(str(b or "").split())


def decision_value(value: Any) -> str | None:
    """'accept', 'reject', or None for a value that says neither."""
    text = str(value).strip().lower() if value is not None else ""
    if text in KEEP_VALUES:
        return "accept"
    if text in DROP_VALUES:
        return "reject"
    return None


@dataclass
class Vote:
    """One annotator's decision on one record."""

    user: str
    status: str  # "submitted" or "discarded"
    decision: str | None = None  # "accept", "reject" or None (not answered)
    rating: float | None = None
    response: str | None = None  # the corrected_response answer, as given
    label: str | None = None  # the corrected_label answer, as given
    other: dict[str, Any] = field(default_factory=dict)  # answers to questions push did not create

    @property
    def keeps(self) -> bool:
        return self.status == "submitted" and self.decision != "reject"

    def final_response(self, original: str | None) -> str | None:
        if self.response is not None and str(self.response).strip() and not same_text(self.response, original):
            return str(self.response)
        return original

    def final_label(self, original: str | None) -> str | None:
        if self.label is not None and self.label != original:
            return self.label
        return original

    def outcome(self, original_response: str | None, original_label: str | None) -> str:
        if not self.keeps:
            return REJECTED
        changed = not same_text(self.final_response(original_response), original_response) or (
            self.final_label(original_label) != original_label
        )
        return CORRECTED if changed else ACCEPTED

    def to_dict(self) -> dict:
        out = {"user": self.user, "status": self.status, "decision": self.decision}
        for name in ("rating", "response", "label"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.other:
            out["other"] = self.other
        return out


@dataclass
class Outcome:
    """What the votes decide for one row."""

    outcome: str
    response: str | None
    label: str | None
    votes: int
    rating: float | None
    conflict: bool
    rule: str  # "unanimous", "majority", "tie", "no decision"


def _plurality(values: list[Any], original: Any, same=lambda a, b: a == b) -> Any:
    """The value most votes give; on a tie, the original when it is among the leaders."""
    groups: list[list[Any]] = []
    for value in values:
        for group in groups:
            if same(group[0], value):
                group.append(value)
                break
        else:
            groups.append([value])
    best = max(len(g) for g in groups)
    leaders = [g[0] for g in groups if len(g) == best]
    for leader in leaders:
        if same(leader, original):
            return original
    return leaders[0]


def decide(
    votes: list[Vote],
    original_response: str | None,
    original_label: str | None,
    *,
    min_votes: int = 1,
    on_tie: str = "reject",
) -> Outcome:
    """Apply the majority rule to a row's votes."""
    ratings = [v.rating for v in votes if v.rating is not None]
    rating = sum(ratings) / len(ratings) if ratings else None
    if len(votes) < max(1, min_votes):
        return Outcome(PENDING, original_response, original_label, len(votes), rating, False, "no decision")
    per_vote = [v.outcome(original_response, original_label) for v in votes]
    keepers = [v for v in votes if v.keeps]
    drops = len(votes) - len(keepers)
    conflict = len(set(per_vote)) > 1
    rule = "unanimous" if not conflict else "majority"
    if len(keepers) == drops:
        rule = "tie"
        if on_tie == "pending":
            return Outcome(PENDING, original_response, original_label, len(votes), rating, True, rule)
        return Outcome(REJECTED, original_response, original_label, len(votes), rating, True, rule)
    if drops > len(keepers):
        return Outcome(REJECTED, original_response, original_label, len(votes), rating, conflict, rule)
    response = _plurality([v.final_response(original_response) for v in keepers], original_response, same_text)
    label = _plurality([v.final_label(original_label) for v in keepers], original_label)
    changed = not same_text(response, original_response) or label != original_label
    return Outcome(CORRECTED if changed else ACCEPTED, response, label, len(votes), rating, conflict, rule)


def outcome_counts(outcomes: list[str]) -> dict[str, int]:
    counts = Counter(outcomes)
    return {name: counts.get(name, 0) for name in OUTCOMES}

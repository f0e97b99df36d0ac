"""The voting protocol of ARCHITECTURE.md, as a pure function (no database).

A pathologist's *effective* vote on a core is their latest vote in the ``initial`` or ``review``
rounds. The latest ``adjudication`` vote, if any, decides: a score gives ``adjudicated``, ND gives
``excluded``. Otherwise, with fewer than 2 effective votes the core has ``insufficient_votes``; if
the most frequent category (ND counts as a category) is unique and has at least ``min_agreement``
votes the core is ``agreed`` with that score, or ``excluded`` when that category is ND; otherwise
(a tie at the top, or no two agree) it ``needs_adjudication``. Only ``agreed`` and
``adjudicated`` cores carry a training label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from her2ops.scores import HER2Score


class Round(StrEnum):
    INITIAL = "initial"
    ADJUDICATION = "adjudication"
    REVIEW = "review"


class LabelStatus(StrEnum):
    AGREED = "agreed"
    ADJUDICATED = "adjudicated"
    EXCLUDED = "excluded"
    INSUFFICIENT_VOTES = "insufficient_votes"
    NEEDS_ADJUDICATION = "needs_adjudication"

    @property
    def has_label(self) -> bool:
        return self in (LabelStatus.AGREED, LabelStatus.ADJUDICATED)


@dataclass(frozen=True)
class Vote:
    """One vote as the protocol sees it. ``score`` None means ND. ``order`` breaks time ties."""

    voter: str
    score: HER2Score | None
    round: Round
    at: datetime
    order: int = 0


@dataclass(frozen=True)
class Resolution:
    """The protocol's outcome for one core."""

    status: LabelStatus
    score: HER2Score | None
    n_votes: int
    agreement: float | None

    @property
    def has_label(self) -> bool:
        return self.status.has_label


def effective_votes(votes: Iterable[Vote]) -> dict[str, HER2Score | None]:
    """Each voter's latest initial-or-review vote."""
    latest: dict[str, Vote] = {}
    for v in votes:
        if v.round is Round.ADJUDICATION:
            continue
        cur = latest.get(v.voter)
        if cur is None or (v.at, v.order) >= (cur.at, cur.order):
            latest[v.voter] = v
    return {voter: v.score for voter, v in latest.items()}


def resolve_votes(votes: Iterable[Vote], *, min_agreement: int = 2) -> Resolution:
    """Apply the voting protocol to all votes on one core."""
    votes = list(votes)
    eff = effective_votes(votes)
    n = len(eff)
    counts = Counter(eff.values())
    top = counts.most_common()
    agreement = (top[0][1] / n) if n else None

    adjudications = [v for v in votes if v.round is Round.ADJUDICATION]
    if adjudications:
        last = max(adjudications, key=lambda v: (v.at, v.order))
        if last.score is None:
            return Resolution(LabelStatus.EXCLUDED, None, n, agreement)
        return Resolution(LabelStatus.ADJUDICATED, last.score, n, agreement)

    if n < 2:
        return Resolution(LabelStatus.INSUFFICIENT_VOTES, None, n, agreement)
    category, count = top[0]
    unique_top = len(top) == 1 or top[1][1] < count
    if unique_top and count >= min_agreement:
        if category is None:
            return Resolution(LabelStatus.EXCLUDED, None, n, agreement)
        return Resolution(LabelStatus.AGREED, category, n, agreement)
    return Resolution(LabelStatus.NEEDS_ADJUDICATION, None, n, agreement)

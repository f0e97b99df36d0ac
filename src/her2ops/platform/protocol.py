"""The voting protocol of ARCHITECTURE.md, as pure functions (no database).

A pathologist's *effective* vote on a core is their latest ``review`` vote, else their
``initial`` vote (a review outranks an initial read recorded after it); the users with an
effective vote are the core's *panel*. The latest ``adjudication`` vote, if any, decides: a
score gives ``adjudicated``, ND gives ``excluded``. Otherwise, with fewer than ``min_votes``
effective votes the core has ``insufficient_votes``; if the most frequent category (ND counts as
a category) is unique and has at least ``min_agreement`` votes the core is
``agreed`` with that score, or ``excluded`` when that category is ND; otherwise (a tie at the
top, or no two agree) it ``needs_adjudication``. Only ``agreed`` and ``adjudicated`` cores carry
a training label.

Lab policy (settings ``HER2OPS_MIN_AGREEMENT``, ``HER2OPS_MIN_VOTES``,
``HER2OPS_ADJUDICATOR_OUTSIDE_PANEL``): ``min_agreement`` 2 and ``min_votes`` 2 by default; the
paper's protocol (five pathologists score every core, at least two must agree) is
``min_votes = 5``.

Who may adjudicate (:func:`adjudication_refusal`): by default only a user outside the core's
panel, and only on a core whose panel outcome is ``needs_adjudication`` and that has no
adjudication yet -- unless a lab manager *reopened* the core (``reopened_at``): a reopened core
needs adjudication until an adjudication vote newer than the reopening arrives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
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
    """Each voter's latest review vote, else their initial vote.

    A review vote is a second look, so it outranks the voter's initial vote whenever that was
    recorded: an initial read imported late (after the voter reviewed the core) does not
    override the review. In the usual order (initial, then review) this is simply the latest.
    """
    latest: dict[str, Vote] = {}
    for v in votes:
        if v.round is Round.ADJUDICATION:
            continue
        cur = latest.get(v.voter)
        if cur is None or _rank(v) >= _rank(cur):
            latest[v.voter] = v
    return {voter: v.score for voter, v in latest.items()}


def _rank(v: Vote) -> tuple[bool, datetime, int]:
    return (v.round is Round.REVIEW, v.at, v.order)


def panel(votes: Iterable[Vote]) -> set[str]:
    """The voters with an effective (initial or review) vote."""
    return {v.voter for v in votes if v.round is not Round.ADJUDICATION}


def _latest_adjudication(votes: Iterable[Vote], after: datetime | None) -> Vote | None:
    adjudications = [
        v for v in votes if v.round is Round.ADJUDICATION and (after is None or _later(v.at, after))
    ]
    return max(adjudications, key=lambda v: (v.at, v.order)) if adjudications else None


def as_utc(at: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes, PostgreSQL aware ones: make them all aware."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _later(a: datetime, b: datetime) -> bool:
    return as_utc(a) > as_utc(b)


def resolve_votes(
    votes: Iterable[Vote],
    *,
    min_agreement: int = 2,
    min_votes: int = 2,
    reopened_at: datetime | None = None,
) -> Resolution:
    """Apply the voting protocol to all votes on one core (``reopened_at``: when a lab
    manager last reopened it for adjudication, if ever)."""
    votes = list(votes)
    eff = effective_votes(votes)
    n = len(eff)
    counts = Counter(eff.values())
    top = counts.most_common()
    agreement = (top[0][1] / n) if n else None

    last = _latest_adjudication(votes, reopened_at)
    if last is not None:
        if last.score is None:
            return Resolution(LabelStatus.EXCLUDED, None, n, agreement)
        return Resolution(LabelStatus.ADJUDICATED, last.score, n, agreement)
    if reopened_at is not None:
        return Resolution(LabelStatus.NEEDS_ADJUDICATION, None, n, agreement)

    if n < min_votes:
        return Resolution(LabelStatus.INSUFFICIENT_VOTES, None, n, agreement)
    category, count = top[0]
    unique_top = len(top) == 1 or top[1][1] < count
    if unique_top and count >= min_agreement:
        if category is None:
            return Resolution(LabelStatus.EXCLUDED, None, n, agreement)
        return Resolution(LabelStatus.AGREED, category, n, agreement)
    return Resolution(LabelStatus.NEEDS_ADJUDICATION, None, n, agreement)


@dataclass(frozen=True)
class Refusal:
    """Why an adjudication vote is refused: ``who`` (the voter may not) or ``state`` (the core
    does not need one)."""

    kind: str
    message: str


def adjudication_refusal(
    votes: Iterable[Vote],
    voter: str,
    *,
    min_agreement: int = 2,
    min_votes: int = 2,
    outside_panel: bool = True,
    reopened_at: datetime | None = None,
) -> Refusal | None:
    """``None`` if ``voter`` may cast an adjudication vote on a core with these ``votes``,
    else the reason (see the module docstring)."""
    votes = list(votes)
    if outside_panel and voter in panel(votes):
        return Refusal(
            "who",
            f"{voter} is in this core's panel (has an initial or review vote); "
            "an adjudicator must be outside the panel",
        )
    if reopened_at is not None and _latest_adjudication(votes, reopened_at) is None:
        return None
    last = _latest_adjudication(votes, reopened_at)
    if last is not None:
        return Refusal(
            "state",
            f"already adjudicated (by {last.voter}); a lab manager can reopen it "
            "(her2ops labels reopen CORE)",
        )
    status = resolve_votes(
        [v for v in votes if v.round is not Round.ADJUDICATION],
        min_agreement=min_agreement,
        min_votes=min_votes,
    ).status
    if status is not LabelStatus.NEEDS_ADJUDICATION:
        return Refusal(
            "state",
            f"does not need adjudication (its panel's outcome is {status.value}); "
            "a lab manager can reopen it (her2ops labels reopen CORE)",
        )
    return None

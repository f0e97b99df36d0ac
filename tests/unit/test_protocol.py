"""Table-driven tests of the voting protocol (ARCHITECTURE.md, 'The voting protocol')."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from her2ops.platform.protocol import (
    LabelStatus,
    Round,
    Vote,
    adjudication_refusal,
    resolve_votes,
)
from her2ops.scores import HER2Score, parse_vote

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INI, A, R = Round.INITIAL, Round.ADJUDICATION, Round.REVIEW


def votes(*spec: tuple[str, str, Round]) -> list[Vote]:
    """(voter, score text, round) in time order."""
    return [
        Vote(voter=v, score=parse_vote(s), round=r, at=T0 + timedelta(minutes=i), order=i)
        for i, (v, s, r) in enumerate(spec)
    ]


CASES = [
    # name, votes, expected status, expected score, n effective votes
    ("no votes", [], "insufficient_votes", None, 0),
    ("one vote", [("a", "2+", INI)], "insufficient_votes", None, 1),
    ("two agree", [("a", "2+", INI), ("b", "2+", INI)], "agreed", 2, 2),
    ("two disagree", [("a", "2+", INI), ("b", "3+", INI)], "needs_adjudication", None, 2),
    (
        "majority of five",
        [("a", "1+", INI), ("b", "1+", INI), ("c", "0", INI), ("d", "1+", INI), ("e", "2+", INI)],
        "agreed",
        1,
        5,
    ),
    (
        "2-2-1 tie at top",
        [("a", "0", INI), ("b", "0", INI), ("c", "1+", INI), ("d", "1+", INI), ("e", "2+", INI)],
        "needs_adjudication",
        None,
        5,
    ),
    (
        "2-1-1-1 unique top",
        [("a", "3+", INI), ("b", "3+", INI), ("c", "2+", INI), ("d", "1+", INI), ("e", "0", INI)],
        "agreed",
        3,
        5,
    ),
    (
        "all differ",
        [("a", "0", INI), ("b", "1+", INI), ("c", "2+", INI), ("d", "3+", INI)],
        "needs_adjudication",
        None,
        4,
    ),
    (
        "ND majority excludes",
        [("a", "ND", INI), ("b", "ND", INI), ("c", "2+", INI)],
        "excluded",
        None,
        3,
    ),
    (
        "ND minority ignored by count",
        [("a", "ND", INI), ("b", "2+", INI), ("c", "2+", INI)],
        "agreed",
        2,
        3,
    ),
    (
        "adjudication decides",
        [("a", "2+", INI), ("b", "3+", INI), ("x", "3+", A)],
        "adjudicated",
        3,
        2,
    ),
    (
        "adjudication ND excludes",
        [("a", "2+", INI), ("b", "3+", INI), ("x", "ND", A)],
        "excluded",
        None,
        2,
    ),
    (
        "adjudication overrides agreement",
        [("a", "2+", INI), ("b", "2+", INI), ("x", "3+", A)],
        "adjudicated",
        3,
        2,
    ),
    (
        "latest adjudication wins",
        [("a", "2+", INI), ("x", "3+", A), ("y", "1+", A)],
        "adjudicated",
        1,
        1,
    ),
    (
        "review replaces own initial",
        [("a", "2+", INI), ("b", "3+", INI), ("a", "3+", R)],
        "agreed",
        3,
        2,
    ),
    (
        "latest review of a voter counts",
        [("a", "2+", INI), ("b", "2+", INI), ("a", "3+", R), ("a", "2+", R)],
        "agreed",
        2,
        2,
    ),
    (
        "review from a new voter adds a vote",
        [("a", "1+", INI), ("b", "2+", INI), ("c", "2+", R)],
        "agreed",
        2,
        3,
    ),
]


@pytest.mark.parametrize(("name", "spec", "status", "score", "n"), CASES, ids=[c[0] for c in CASES])
def test_protocol_table(
    name: str, spec: list[tuple[str, str, Round]], status: str, score: int | None, n: int
) -> None:
    res = resolve_votes(votes(*spec))
    assert res.status == LabelStatus(status)
    assert res.score == (None if score is None else HER2Score(score))
    assert res.n_votes == n
    assert res.has_label == (status in ("agreed", "adjudicated"))


def test_min_agreement_three() -> None:
    res = resolve_votes(
        votes(("a", "2+", INI), ("b", "2+", INI), ("c", "1+", INI)), min_agreement=3
    )
    assert res.status is LabelStatus.NEEDS_ADJUDICATION


def test_agreement_fraction() -> None:
    res = resolve_votes(
        votes(("a", "2+", INI), ("b", "2+", INI), ("c", "1+", INI), ("d", "2+", INI))
    )
    assert res.agreement == pytest.approx(0.75)


def test_order_breaks_equal_timestamps() -> None:
    same = [
        Vote("a", HER2Score.ONE, INI, T0, order=1),
        Vote("a", HER2Score.THREE, R, T0, order=2),
        Vote("b", HER2Score.THREE, INI, T0, order=3),
    ]
    assert resolve_votes(same).score == HER2Score.THREE


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("1+", 1), ("2", 2), (" 3+ ", 3), ("ND", None), ("nd", None)]
)
def test_parse_vote(text: str, value: int | None) -> None:
    assert parse_vote(text) == value


@pytest.mark.parametrize("text", ["4", "", "3++", "-1", "two"])
def test_parse_vote_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad score"):
        parse_vote(text)


# --- min_votes (lab policy; 5 for the paper's protocol) --------------------------------------

FIVE_AGREE_2 = [("a", "2+", INI), ("b", "2+", INI), ("c", "1+", INI), ("d", "3+", INI)]
MIN_VOTES_CASES = [
    # name, votes, min_votes, min_agreement, expected status, score
    ("2 agree, min_votes 2", FIVE_AGREE_2[:2], 2, 2, "agreed", 2),
    ("2 agree, min_votes 5", FIVE_AGREE_2[:2], 5, 2, "insufficient_votes", None),
    ("4 votes, min_votes 5", FIVE_AGREE_2, 5, 2, "insufficient_votes", None),
    ("5 votes, 2-1-1-1, min_votes 5", [*FIVE_AGREE_2, ("e", "0", INI)], 5, 2, "agreed", 2),
    (
        "5 votes, 2-2-1, min_votes 5",
        [*FIVE_AGREE_2, ("e", "1+", INI)],
        5,
        2,
        "needs_adjudication",
        None,
    ),
    (
        "review of a panel member adds no vote",
        [*FIVE_AGREE_2, ("a", "2+", R)],
        5,
        2,
        "insufficient_votes",
        None,
    ),
    ("one vote, min_votes 1", [("a", "3+", INI)], 1, 1, "agreed", 3),
    (
        "one vote, min_votes 1, min_agreement 2",
        [("a", "3+", INI)],
        1,
        2,
        "needs_adjudication",
        None,
    ),
    (
        "adjudication decides below min_votes",
        [("a", "1+", INI), ("x", "2+", A)],
        5,
        2,
        "adjudicated",
        2,
    ),
]


@pytest.mark.parametrize(
    ("name", "spec", "min_votes", "min_agreement", "status", "score"),
    MIN_VOTES_CASES,
    ids=[c[0] for c in MIN_VOTES_CASES],
)
def test_min_votes_table(
    name: str,
    spec: list[tuple[str, str, Round]],
    min_votes: int,
    min_agreement: int,
    status: str,
    score: int | None,
) -> None:
    res = resolve_votes(votes(*spec), min_votes=min_votes, min_agreement=min_agreement)
    assert res.status == LabelStatus(status)
    assert res.score == (None if score is None else HER2Score(score))


# --- who may adjudicate, and when -----------------------------------------------------------

DISCORD = [("a", "2+", INI), ("b", "3+", INI)]
AGREED = [("a", "2+", INI), ("b", "2+", INI)]
REOPEN = T0 + timedelta(minutes=30)
ADJ_CASES = [
    # name, votes, voter, outside_panel, min_votes, reopened_at, refused kind (None: allowed)
    ("outsider on a discordant core", DISCORD, "x", True, 2, None, None),
    ("panel member", DISCORD, "a", True, 2, None, "who"),
    ("panel member, rule off", DISCORD, "a", False, 2, None, None),
    ("reviewer counts as panel", [*DISCORD, ("c", "3+", R)], "c", True, 2, None, "who"),
    ("agreed core", AGREED, "x", True, 2, None, "state"),
    ("too few votes", [("a", "2+", INI)], "x", True, 2, None, "state"),
    ("discordant but below min_votes 5", DISCORD, "x", True, 5, None, "state"),
    ("already adjudicated", [*DISCORD, ("x", "3+", A)], "y", True, 2, None, "state"),
    ("agreed core, reopened", AGREED, "x", True, 2, REOPEN, None),
    ("adjudicated, then reopened", [*DISCORD, ("x", "3+", A)], "y", True, 2, REOPEN, None),
    ("reopened before any vote", AGREED, "y", True, 2, T0 - timedelta(minutes=1), None),
    ("panel member on a reopened core", AGREED, "a", True, 2, REOPEN, "who"),
]


@pytest.mark.parametrize(
    ("name", "spec", "voter", "outside", "min_votes", "reopened", "kind"),
    ADJ_CASES,
    ids=[c[0] for c in ADJ_CASES],
)
def test_adjudication_refusal_table(
    name: str,
    spec: list[tuple[str, str, Round]],
    voter: str,
    outside: bool,
    min_votes: int,
    reopened: datetime | None,
    kind: str | None,
) -> None:
    refusal = adjudication_refusal(
        votes(*spec), voter, outside_panel=outside, min_votes=min_votes, reopened_at=reopened
    )
    assert (refusal.kind if refusal else None) == kind
    if refusal is not None:
        assert "\n" not in refusal.message and len(refusal.message) < 160


def test_reopened_core_needs_adjudication_until_a_newer_adjudication() -> None:
    # votes at minutes 0, 1 (agree); reopened at 30
    res = resolve_votes(votes(*AGREED), reopened_at=REOPEN)
    assert res.status is LabelStatus.NEEDS_ADJUDICATION
    # an adjudication at minute 2 (before the reopening) no longer decides
    res = resolve_votes(votes(*DISCORD, ("x", "1+", A)), reopened_at=REOPEN)
    assert res.status is LabelStatus.NEEDS_ADJUDICATION
    late = [
        *votes(*AGREED),
        Vote("y", HER2Score.THREE, A, REOPEN + timedelta(minutes=1), order=9),
    ]
    res = resolve_votes(late, reopened_at=REOPEN)
    assert res.status is LabelStatus.ADJUDICATED and res.score == HER2Score.THREE
    assert adjudication_refusal(late, "z", reopened_at=REOPEN).kind == "state"  # type: ignore[union-attr]
    # naive (SQLite) and aware datetimes compare as UTC
    naive = REOPEN.replace(tzinfo=None)
    assert resolve_votes(late, reopened_at=naive).status is LabelStatus.ADJUDICATED

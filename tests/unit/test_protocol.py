"""Table-driven tests of the voting protocol (ARCHITECTURE.md, 'The voting protocol')."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from her2ops.platform.protocol import LabelStatus, Round, Vote, resolve_votes
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

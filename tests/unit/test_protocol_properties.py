"""Property-based tests (hypothesis) of the voting protocol (platform.protocol.resolve_votes)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from her2ops.platform.protocol import LabelStatus, Round, Vote, resolve_votes
from her2ops.scores import HER2Score

T0 = datetime(2026, 1, 1, tzinfo=UTC)
scores = st.sampled_from([*HER2Score, None])
voters = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def initial_votes(draw: st.DrawFn) -> list[Vote]:
    """At most one initial vote per voter, with distinct times."""
    who = draw(st.lists(voters, unique=True, max_size=5))
    return [
        Vote(
            voter=w, score=draw(scores), round=Round.INITIAL, at=T0 + timedelta(seconds=i), order=i
        )
        for i, w in enumerate(who)
    ]


@given(votes=initial_votes(), perm=st.randoms(), k=st.integers(1, 5))
def test_initial_votes_carry_no_order(votes: list[Vote], perm: object, k: int) -> None:
    shuffled = list(votes)
    perm.shuffle(shuffled)  # type: ignore[attr-defined]
    assert resolve_votes(shuffled, min_agreement=k) == resolve_votes(votes, min_agreement=k)


@given(votes=initial_votes(), k=st.integers(1, 5))
def test_outcome_follows_the_counts(votes: list[Vote], k: int) -> None:
    res = resolve_votes(votes, min_agreement=k)
    counts = Counter(v.score for v in votes)
    assert res.n_votes == len(votes)
    if len(votes) < 2:
        assert res.status is LabelStatus.INSUFFICIENT_VOTES and not res.has_label
        return
    (top, n_top), *rest = counts.most_common()
    unique = not rest or rest[0][1] < n_top
    if res.status is LabelStatus.AGREED:
        assert unique and n_top >= k and res.score == top and top is not None
    elif res.status is LabelStatus.EXCLUDED:
        assert unique and n_top >= k and top is None
    else:
        assert res.status is LabelStatus.NEEDS_ADJUDICATION
        assert not unique or n_top < k
    assert res.agreement == n_top / len(votes)


@given(votes=initial_votes(), changed=scores, who=voters)
def test_a_review_vote_replaces_the_voters_initial_vote(
    votes: list[Vote], changed: HER2Score | None, who: str
) -> None:
    review = Vote(who, changed, Round.REVIEW, T0 + timedelta(days=1), 99)
    replaced = [v for v in votes if v.voter != who] + [
        Vote(who, changed, Round.INITIAL, T0 + timedelta(days=1), 99)
    ]
    assert resolve_votes([*votes, review]) == resolve_votes(replaced)


@given(votes=initial_votes(), changed=scores, late=scores, who=voters)
def test_an_initial_vote_recorded_after_the_voters_review_does_not_override_it(
    votes: list[Vote], changed: HER2Score | None, late: HER2Score | None, who: str
) -> None:
    """E.g. a lab manager imports a late batch of first reads after the review round."""
    others = [v for v in votes if v.voter != who]
    review = Vote(who, changed, Round.REVIEW, T0 + timedelta(days=1), 99)
    late_initial = Vote(who, late, Round.INITIAL, T0 + timedelta(days=2), 100)
    assert resolve_votes([*others, review, late_initial]) == resolve_votes([*others, review])


@given(votes=initial_votes(), adjudications=st.lists(scores, min_size=1, max_size=3))
def test_the_latest_adjudication_decides(
    votes: list[Vote], adjudications: list[HER2Score | None]
) -> None:
    adj = [
        Vote("z", s, Round.ADJUDICATION, T0 + timedelta(days=2, seconds=i), 100 + i)
        for i, s in enumerate(adjudications)
    ]
    res = resolve_votes([*votes, *adj])
    last = adjudications[-1]
    if last is None:
        assert res.status is LabelStatus.EXCLUDED and res.score is None
    else:
        assert res.status is LabelStatus.ADJUDICATED and res.score == last


@given(votes=initial_votes())
def test_only_agreed_and_adjudicated_carry_a_label(votes: list[Vote]) -> None:
    res = resolve_votes(votes)
    assert res.has_label == (res.score is not None)
    assert res.has_label == (res.status in (LabelStatus.AGREED, LabelStatus.ADJUDICATED))

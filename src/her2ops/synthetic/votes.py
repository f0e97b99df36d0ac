"""Simulated pathologists voting on synthetic cores, following the paper's labelling protocol.

Five pathologists (``path1``..``path5``) score every core in round ``initial``. Each draws a
vote from a row of its own confusion matrix (``PATHOLOGIST_CONFUSION``: rows are the true class
0..3, columns the vote 0, 1+, 2+, 3+, ND). Errors go mostly to the adjacent class, more often
between 0 and 1+ and between 2+ and 3+, as in the CAP surveys; ``path2`` over-calls, ``path3``
under-calls, ``path4`` is the most accurate and ``path5`` the noisiest. On artefact cores each
votes ND with probability ``ARTEFACT_ND_RATE`` and otherwise scores the underlying tissue.

Where :func:`her2ops.platform.protocol.resolve_votes` over the initial votes says
``needs_adjudication``, an ``adjudicator`` votes in round ``adjudication``: ND on artefact cores
(the core is excluded), otherwise from ``ADJUDICATOR_CONFUSION``, or ND (exclusion of a
discordant core) with probability ``ADJUDICATOR_EXCLUDE_RATE``. So the consensus holds agreed,
adjudicated and excluded cores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from her2ops.platform.protocol import LabelStatus, Resolution, Round, Vote, resolve_votes
from her2ops.scores import ND, SCORE_LABELS, HER2Score

#: vote categories, the columns of the confusion matrices.
VOTE_LABELS: tuple[str, ...] = (*SCORE_LABELS, ND)

# rows: true class 0, 1+, 2+, 3+; columns: vote 0, 1+, 2+, 3+, ND. Each row sums to 1.
PATHOLOGIST_CONFUSION: dict[str, NDArray[np.float64]] = {
    "path1": np.array(
        [
            [0.86, 0.12, 0.01, 0.00, 0.01],
            [0.09, 0.83, 0.07, 0.00, 0.01],
            [0.00, 0.05, 0.84, 0.10, 0.01],
            [0.00, 0.00, 0.09, 0.90, 0.01],
        ]
    ),
    "path2": np.array(  # over-calls
        [
            [0.78, 0.20, 0.01, 0.00, 0.01],
            [0.04, 0.83, 0.12, 0.00, 0.01],
            [0.00, 0.02, 0.81, 0.16, 0.01],
            [0.00, 0.00, 0.05, 0.94, 0.01],
        ]
    ),
    "path3": np.array(  # under-calls
        [
            [0.92, 0.07, 0.00, 0.00, 0.01],
            [0.18, 0.77, 0.04, 0.00, 0.01],
            [0.00, 0.10, 0.84, 0.05, 0.01],
            [0.00, 0.01, 0.15, 0.83, 0.01],
        ]
    ),
    "path4": np.array(  # the most accurate
        [
            [0.89, 0.10, 0.00, 0.00, 0.01],
            [0.07, 0.87, 0.05, 0.00, 0.01],
            [0.00, 0.04, 0.88, 0.07, 0.01],
            [0.00, 0.00, 0.07, 0.92, 0.01],
        ]
    ),
    "path5": np.array(  # the noisiest
        [
            [0.80, 0.17, 0.02, 0.00, 0.01],
            [0.12, 0.77, 0.10, 0.00, 0.01],
            [0.01, 0.08, 0.77, 0.13, 0.01],
            [0.00, 0.01, 0.12, 0.86, 0.01],
        ]
    ),
}
PATHOLOGISTS: tuple[str, ...] = tuple(PATHOLOGIST_CONFUSION)
#: probability that a pathologist votes ND on an artefact core.
ARTEFACT_ND_RATE: dict[str, float] = {
    "path1": 0.85,
    "path2": 0.75,
    "path3": 0.90,
    "path4": 0.85,
    "path5": 0.70,
}
ADJUDICATOR = "adjudicator"
#: rows: true class; columns: vote 0..3 (the adjudicator's ND is a separate exclusion draw).
ADJUDICATOR_CONFUSION: NDArray[np.float64] = np.array(
    [
        [0.92, 0.08, 0.00, 0.00],
        [0.06, 0.90, 0.04, 0.00],
        [0.00, 0.04, 0.90, 0.06],
        [0.00, 0.00, 0.06, 0.94],
    ]
)
ADJUDICATOR_EXCLUDE_RATE = 0.08

_ARTEFACT_COMMENT = {
    "fold": "tissue fold",
    "debris": "debris over the tissue",
    "pale": "pale, nondiagnostic",
}
_AT = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class VoteRow:
    """One row of ``votes.csv``."""

    core: str
    pathologist: str
    score: str  # 0, 1+, 2+, 3+ or ND
    round: str
    comment: str = ""


@dataclass(frozen=True)
class CoreVotes:
    """All votes on one core and the protocol's resolution of them."""

    core: str
    votes: tuple[VoteRow, ...]
    resolution: Resolution


def _to_protocol(rows: Sequence[VoteRow]) -> list[Vote]:
    out = []
    for i, row in enumerate(rows):
        score = None if row.score == ND else HER2Score(SCORE_LABELS.index(row.score))
        out.append(Vote(row.pathologist, score, Round(row.round), _AT, order=i))
    return out


def simulate_core_votes(
    core: str,
    true_score: int,
    artefact: str | None,
    rng: np.random.Generator,
    *,
    ambiguous_with: int | None = None,
    ambiguity: float = 0.0,
) -> CoreVotes:
    """Initial votes of the five pathologists on one core, plus adjudication when needed.

    An ambiguous core (``ambiguous_with`` an adjacent class, ``ambiguity`` in [0, 1]) is read
    as that class with weight ``ambiguity / 2``: each pathologist's confusion row is the mix
    ``(1 - a/2) C[true] + a/2 C[ambiguous_with]``, so ``ambiguity`` 1 is a coin toss. The random
    draws are the same as for a clear core, so an unambiguous data set is unchanged.
    """
    rows: list[VoteRow] = []
    mix = 0.5 * float(np.clip(ambiguity, 0.0, 1.0)) if ambiguous_with is not None else 0.0
    for name in PATHOLOGISTS:
        if artefact is not None and rng.random() < ARTEFACT_ND_RATE[name]:
            rows.append(VoteRow(core, name, ND, Round.INITIAL.value, _ARTEFACT_COMMENT[artefact]))
            continue
        row = PATHOLOGIST_CONFUSION[name][true_score]
        if mix > 0 and ambiguous_with is not None:
            row = (1.0 - mix) * row + mix * PATHOLOGIST_CONFUSION[name][ambiguous_with]
        cat = int(rng.choice(len(VOTE_LABELS), p=row))
        rows.append(VoteRow(core, name, VOTE_LABELS[cat], Round.INITIAL.value))
    resolution = resolve_votes(_to_protocol(rows))
    if resolution.status is LabelStatus.NEEDS_ADJUDICATION:
        if artefact is not None:
            adj = VoteRow(
                core, ADJUDICATOR, ND, Round.ADJUDICATION.value, _ARTEFACT_COMMENT[artefact]
            )
        elif rng.random() < ADJUDICATOR_EXCLUDE_RATE:
            adj = VoteRow(core, ADJUDICATOR, ND, Round.ADJUDICATION.value, "discordant; excluded")
        else:
            cat = int(rng.choice(len(SCORE_LABELS), p=ADJUDICATOR_CONFUSION[true_score]))
            adj = VoteRow(core, ADJUDICATOR, SCORE_LABELS[cat], Round.ADJUDICATION.value)
        rows.append(adj)
        resolution = resolve_votes(_to_protocol(rows))
    return CoreVotes(core, tuple(rows), resolution)


def simulate_votes(
    cores: Sequence[str],
    true_scores: Sequence[int],
    artefacts: Sequence[str | None],
    rng: np.random.Generator,
    *,
    ambiguous_with: Sequence[int | None] | None = None,
    ambiguity: Sequence[float] | None = None,
) -> list[CoreVotes]:
    """Votes on many cores (see :func:`simulate_core_votes`), in the order given."""
    if not len(cores) == len(true_scores) == len(artefacts):
        raise ValueError("cores, true_scores and artefacts must have the same length")
    amb_with = list(ambiguous_with) if ambiguous_with is not None else [None] * len(cores)
    amb = list(ambiguity) if ambiguity is not None else [0.0] * len(cores)
    return [
        simulate_core_votes(c, int(t), a, rng, ambiguous_with=w, ambiguity=x)
        for c, t, a, w, x in zip(cores, true_scores, artefacts, amb_with, amb, strict=True)
    ]


def inject_label_error(votes: CoreVotes, wrong: int, rng: np.random.Generator) -> CoreVotes:
    """The panel misreads a core: three of the five pathologists' initial votes become
    ``wrong`` and any adjudication is dropped, so the protocol agrees on ``wrong``."""
    turned = set(rng.choice(len(PATHOLOGISTS), size=3, replace=False).tolist())
    names = {PATHOLOGISTS[i] for i in turned}
    rows = []
    for v in votes.votes:
        if v.round != Round.INITIAL.value:
            continue
        if v.pathologist in names:
            v = VoteRow(v.core, v.pathologist, SCORE_LABELS[wrong], v.round)
        rows.append(v)
    resolution = resolve_votes(_to_protocol(rows))
    return CoreVotes(votes.core, tuple(rows), resolution)


def status_counts(results: Sequence[CoreVotes]) -> dict[str, int]:
    """How many cores end in each protocol status."""
    counts = Counter(r.resolution.status.value for r in results)
    return {s.value: counts.get(s.value, 0) for s in LabelStatus}


def pairwise_agreement(results: Sequence[CoreVotes]) -> float:
    """Share of pathologist pairs (initial round) that give the same category on a core."""
    agree = total = 0
    for r in results:
        cats = [v.score for v in r.votes if v.round == Round.INITIAL.value]
        for i in range(len(cats)):
            for j in range(i + 1, len(cats)):
                agree += cats[i] == cats[j]
                total += 1
    return agree / total if total else float("nan")

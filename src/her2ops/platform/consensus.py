"""Applying the voting protocol (``protocol.resolve_votes``) to the cores whose votes changed.

Labels are versioned: when a core's outcome (status and score) changes, a new
``consensus_labels`` row is added and marked current; the old one stays as history. A core whose
outcome is unchanged keeps its row. Everything runs as a few bulk statements so that tens of
thousands of cores resolve in seconds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.protocol import Resolution, Round, Vote, resolve_votes
from her2ops.platform.schema import ConsensusLabel, Core, User, utcnow
from her2ops.platform.schema import Vote as VoteRow
from her2ops.scores import HER2Score, parse_vote

CHUNK = 5000


@dataclass
class LabelChange:
    core: str
    old_status: str | None
    old_score: int | None
    new_status: str
    new_score: int | None


@dataclass
class ConsensusReport:
    evaluated: int = 0
    changed: list[LabelChange] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)

    def to_dict(self, *, max_changes: int = 200) -> dict[str, object]:
        return {
            "evaluated": self.evaluated,
            "changed": len(self.changed),
            "by_status": self.by_status,
            "changes": [c.__dict__ for c in self.changed[:max_changes]],
        }


def apply_consensus(
    session: Session, *, actor: str | None, all_cores: bool = False, min_agreement: int = 2
) -> ConsensusReport:
    """Resolve the cores flagged ``needs_consensus`` (or every core) and version the labels."""
    actor_user = require(session, actor, "consensus.apply")
    core_q = select(Core.id, Core.code)
    if not all_cores:
        core_q = core_q.where(Core.needs_consensus.is_(True))
    cores = dict(session.execute(core_q).all())
    report = ConsensusReport(evaluated=len(cores))
    if not cores:
        return report

    ids = sorted(cores)
    votes: dict[int, list[Vote]] = defaultdict(list)
    current: dict[int, tuple[int, int, str, int | None]] = {}
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        q = (
            select(
                VoteRow.core_id,
                User.username,
                VoteRow.score,
                VoteRow.round,
                VoteRow.created_at,
                VoteRow.id,
            )
            .join(User, User.id == VoteRow.user_id)
            .where(VoteRow.core_id.in_(chunk))
        )
        for vcore, username, vscore, rnd, at, vote_id in session.execute(q):
            votes[vcore].append(
                Vote(
                    voter=username, score=parse_vote(vscore), round=Round(rnd), at=at, order=vote_id
                )
            )
        lq = select(
            ConsensusLabel.core_id,
            ConsensusLabel.id,
            ConsensusLabel.version,
            ConsensusLabel.status,
            ConsensusLabel.score,
        ).where(ConsensusLabel.core_id.in_(chunk), ConsensusLabel.is_current.is_(True))
        for lcore, label_id, version, lstatus, lscore in session.execute(lq):
            current[lcore] = (label_id, version, lstatus, lscore)

    now = utcnow()
    new_rows: list[dict[str, object]] = []
    retire: list[int] = []
    counts: Counter[str] = Counter()
    for core_id in ids:
        res: Resolution = resolve_votes(votes.get(core_id, []), min_agreement=min_agreement)
        score = int(res.score) if isinstance(res.score, HER2Score) else None
        counts[res.status.value] += 1
        prior = current.get(core_id)
        if prior is not None and prior[2] == res.status.value and prior[3] == score:
            continue
        if prior is not None:
            retire.append(prior[0])
        new_rows.append(
            {
                "core_id": core_id,
                "version": (prior[1] + 1) if prior else 1,
                "status": res.status.value,
                "score": score,
                "n_votes": res.n_votes,
                "agreement": res.agreement,
                "is_current": True,
                "created_at": now,
            }
        )
        report.changed.append(
            LabelChange(
                cores[core_id],
                prior[2] if prior else None,
                prior[3] if prior else None,
                res.status.value,
                score,
            )
        )
    for i in range(0, len(retire), CHUNK):
        session.execute(
            update(ConsensusLabel)
            .where(ConsensusLabel.id.in_(retire[i : i + CHUNK]))
            .values(is_current=False)
        )
    if new_rows:
        session.execute(insert(ConsensusLabel), new_rows)
    for i in range(0, len(ids), CHUNK):
        session.execute(
            update(Core).where(Core.id.in_(ids[i : i + CHUNK])).values(needs_consensus=False)
        )
    report.by_status = dict(sorted(counts.items()))
    if report.changed:
        audit.record(
            session,
            actor=actor_user,
            action="consensus.apply",
            entity="labels",
            details={
                "evaluated": report.evaluated,
                "changed": len(report.changed),
                "by_status": report.by_status,
                "cores": [c.core for c in report.changed[:1000]],
            },
        )
    return report


def label_history(session: Session, core: str) -> list[ConsensusLabel]:
    """Every version of a core's label, oldest first."""
    return list(
        session.scalars(
            select(ConsensusLabel)
            .join(Core, Core.id == ConsensusLabel.core_id)
            .where(Core.code == core)
            .order_by(ConsensusLabel.version)
        )
    )

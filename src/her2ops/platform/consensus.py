"""Applying the voting protocol (``protocol.resolve_votes``) to the cores whose votes changed.

Labels are versioned: when a core's outcome (status and score) changes, a new
``consensus_labels`` row is added and marked current; the old one stays as history. A core whose
outcome is unchanged keeps its row. Everything runs as a few bulk statements so that tens of
thousands of cores resolve in seconds.

Label policy. The protocol's parameters (``min_agreement``, ``min_votes``) and the adjudicator
rule are the lab's policy, read from settings (``HER2OPS_MIN_AGREEMENT``, ``HER2OPS_MIN_VOTES``,
``HER2OPS_ADJUDICATOR_OUTSIDE_PANEL``); only lab managers (and admins) run consensus, and only an
admin may run it with other parameters (audited as an override). Adjudication votes are checked
by :func:`check_adjudication` / :func:`gate_adjudications` (called by the vote services): the
voter must be outside the core's panel (if the policy says so) and the core must need
adjudication, unless a lab manager reopened it (:func:`reopen_core`). A reopening is recorded as
the audit event ``labels.reopen`` (the append-only audit trail is its record; no schema change)
plus a new ``needs_adjudication`` label version.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from her2ops.config import get_settings
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.consensus_marks import clear_needs_consensus
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, RowError
from her2ops.platform.protocol import (
    LabelStatus,
    Refusal,
    Resolution,
    Round,
    Vote,
    adjudication_refusal,
    as_utc,
    resolve_votes,
)
from her2ops.platform.schema import AuditEvent, ConsensusLabel, Core, User, utcnow
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


@dataclass(frozen=True)
class Policy:
    """The lab's label policy (settings)."""

    min_agreement: int
    min_votes: int
    adjudicator_outside_panel: bool


def lab_policy() -> Policy:
    st = get_settings()
    return Policy(st.min_agreement, st.min_votes, st.adjudicator_outside_panel)


def _policy_for_run(
    user: User, min_agreement: int | None, min_votes: int | None
) -> tuple[Policy, bool]:
    """The policy of one consensus run and whether it overrides the lab's (admins only)."""
    lab = lab_policy()
    wanted = Policy(
        lab.min_agreement if min_agreement is None else min_agreement,
        lab.min_votes if min_votes is None else min_votes,
        lab.adjudicator_outside_panel,
    )
    for name, value in (("min_agreement", wanted.min_agreement), ("min_votes", wanted.min_votes)):
        if not 1 <= value <= 100:
            raise InvalidRequest(f"{name} must be between 1 and 100, not {value}")
    override = wanted != lab
    if override and user.role != "admin":
        raise PermissionDenied(
            f"consensus parameters are lab policy (min_agreement={lab.min_agreement}, "
            f"min_votes={lab.min_votes} from HER2OPS_MIN_AGREEMENT/HER2OPS_MIN_VOTES); "
            f"only an admin may run consensus with others, not {user.username} ({user.role})"
        )
    return wanted, override


def _load_votes(session: Session, ids: Sequence[int]) -> dict[int, list[Vote]]:
    votes: dict[int, list[Vote]] = defaultdict(list)
    for i in range(0, len(ids), CHUNK):
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
            .where(VoteRow.core_id.in_(ids[i : i + CHUNK]))
        )
        for vcore, username, vscore, rnd, at, vote_id in session.execute(q):
            votes[vcore].append(
                Vote(
                    voter=username,
                    score=parse_vote(vscore),
                    round=Round(rnd),
                    at=as_utc(at),
                    order=vote_id,
                )
            )
    return votes


def _reopened(session: Session, codes: dict[int, str]) -> dict[int, datetime]:
    """core id -> when a lab manager last reopened it (audit events ``labels.reopen``)."""
    by_code = {code: cid for cid, code in codes.items()}
    out: dict[int, datetime] = {}
    ordered = sorted(by_code)
    for i in range(0, len(ordered), CHUNK):
        q = (
            select(AuditEvent.entity_key, func.max(AuditEvent.at))
            .where(
                AuditEvent.action == "labels.reopen",
                AuditEvent.entity == "core",
                AuditEvent.entity_key.in_(ordered[i : i + CHUNK]),
            )
            .group_by(AuditEvent.entity_key)
        )
        for code, at in session.execute(q):
            if code is not None:
                out[by_code[code]] = as_utc(at)
    return out


def apply_consensus(
    session: Session,
    *,
    actor: str | None,
    all_cores: bool = False,
    min_agreement: int | None = None,
    min_votes: int | None = None,
) -> ConsensusReport:
    """Resolve the cores flagged ``needs_consensus`` (or every core) and version the labels.

    ``min_agreement``/``min_votes`` default to the lab's policy (settings); other values are
    refused unless the actor is an admin, and such a run is audited as an override."""
    actor_user = require(session, actor, "consensus.apply")
    policy, override = _policy_for_run(actor_user, min_agreement, min_votes)
    # Each core's votes counter is read before its votes (see consensus_marks).
    core_q = select(Core.id, Core.code, Core.votes_version)
    if not all_cores:
        core_q = core_q.where(Core.needs_consensus.is_(True))
    return _resolve(session, actor_user, core_q, policy, override)


def resolve_cores(session: Session, *, actor: User, core_ids: Collection[int]) -> ConsensusReport:
    """Resolve exactly ``core_ids`` with the lab's policy, as a consequence of a vote the caller
    has already authorised (the review queue's submit, in the vote's transaction)."""
    core_q = select(Core.id, Core.code, Core.votes_version).where(Core.id.in_(sorted(core_ids)))
    return _resolve(session, actor, core_q, lab_policy(), False)


def _resolve(
    session: Session, actor_user: User, core_q: Any, policy: Policy, override: bool
) -> ConsensusReport:
    seen_version: dict[int, int] = {}
    cores: dict[int, str] = {}
    for cid, code, version in session.execute(core_q):
        cores[cid] = code
        seen_version[cid] = version
    report = ConsensusReport(evaluated=len(cores))
    if not cores:
        return report

    ids = sorted(cores)
    votes = _load_votes(session, ids)
    reopened = _reopened(session, cores)
    current: dict[int, tuple[int, int, str, int | None]] = {}
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
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
        res: Resolution = resolve_votes(
            votes.get(core_id, []),
            min_agreement=policy.min_agreement,
            min_votes=policy.min_votes,
            reopened_at=reopened.get(core_id),
        )
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
    clear_needs_consensus(session, seen_version)
    report.by_status = dict(sorted(counts.items()))
    if report.changed or override:
        audit.record(
            session,
            actor=actor_user,
            action="consensus.apply",
            entity="labels",
            details={
                "evaluated": report.evaluated,
                "changed": len(report.changed),
                "by_status": report.by_status,
                "min_agreement": policy.min_agreement,
                "min_votes": policy.min_votes,
                "policy_override": override,
                "cores": [c.core for c in report.changed[:1000]],
            },
        )
    return report


def reopen_core(
    session: Session, *, actor: str | None, core: str, reason: str | None = None
) -> ConsensusLabel:
    """Reopen a core for adjudication (lab managers): its label becomes ``needs_adjudication``
    (a new version) until an adjudication vote newer than this arrives. Audited."""
    user = require(session, actor, "labels.reopen")
    row = session.scalar(select(Core).where(Core.code == core))
    if row is None:
        raise NotFound(f"unknown core {core!r}")
    cur = session.scalar(
        select(ConsensusLabel).where(
            ConsensusLabel.core_id == row.id, ConsensusLabel.is_current.is_(True)
        )
    )
    votes = _load_votes(session, [row.id]).get(row.id, [])
    reopened = _reopened(session, {row.id: core}).get(row.id)
    policy = lab_policy()
    res = resolve_votes(
        votes,
        min_agreement=policy.min_agreement,
        min_votes=policy.min_votes,
        reopened_at=reopened,
    )
    if res.status is LabelStatus.NEEDS_ADJUDICATION:
        raise Conflict(f"core {core} already needs adjudication; there is nothing to reopen")
    if cur is not None:
        cur.is_current = False
    session.flush()
    audit.record(
        session,
        actor=user,
        action="labels.reopen",
        entity="core",
        key=core,
        details={"reason": reason, "previous_status": res.status.value},
    )
    label = ConsensusLabel(
        core_id=row.id,
        version=(cur.version + 1) if cur is not None else 1,
        status=LabelStatus.NEEDS_ADJUDICATION.value,
        score=None,
        n_votes=res.n_votes,
        agreement=res.agreement,
        is_current=True,
    )
    session.add(label)
    session.flush()
    return label


def _refusal_error(core: str, refusal: Refusal) -> Exception:
    message = f"adjudication on core {core} refused: {refusal.message}"
    return PermissionDenied(message) if refusal.kind == "who" else Conflict(message)


def check_adjudication(session: Session, *, core_id: int, core: str, voter: str) -> None:
    """Raise PermissionDenied/Conflict unless ``voter`` may adjudicate the core now."""
    policy = lab_policy()
    refusal = adjudication_refusal(
        _load_votes(session, [core_id]).get(core_id, []),
        voter,
        min_agreement=policy.min_agreement,
        min_votes=policy.min_votes,
        outside_panel=policy.adjudicator_outside_panel,
        reopened_at=_reopened(session, {core_id: core}).get(core_id),
    )
    if refusal is not None:
        raise _refusal_error(core, refusal)


def gate_adjudications(
    session: Session, rows: Sequence[dict[str, Any]], lines: Sequence[int], keys: Sequence[str]
) -> tuple[list[dict[str, Any]], list[RowError]]:
    """Split new vote rows (``votes`` table dicts, with the file's ``lines`` and ``keys``) into
    the rows to write and a RowError for each adjudication vote the policy refuses. The file's
    own initial and review votes count toward the cores' panels and outcomes."""
    adj = [i for i, r in enumerate(rows) if r["round"] == Round.ADJUDICATION.value]
    if not adj:
        return list(rows), []
    core_ids = sorted({int(rows[i]["core_id"]) for i in adj})
    codes = dict(session.execute(select(Core.id, Core.code).where(Core.id.in_(core_ids))).all())
    user_ids = {int(r["user_id"]) for r in rows}
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(user_ids))).all())
    votes = _load_votes(session, core_ids)
    reopened = _reopened(session, codes)
    for i, r in enumerate(rows):
        if r["round"] != Round.ADJUDICATION.value and r["core_id"] in codes:
            votes[r["core_id"]].append(
                Vote(
                    voter=names[r["user_id"]],
                    score=parse_vote(r["score"]),
                    round=Round(r["round"]),
                    at=as_utc(r["created_at"]),
                    order=10**12 + i,  # after every recorded vote, in file order
                )
            )
    policy = lab_policy()
    refused: dict[int, RowError] = {}
    for i in adj:
        cid = int(rows[i]["core_id"])
        refusal = adjudication_refusal(
            votes[cid],
            names[rows[i]["user_id"]],
            min_agreement=policy.min_agreement,
            min_votes=policy.min_votes,
            outside_panel=policy.adjudicator_outside_panel,
            reopened_at=reopened.get(cid),
        )
        if refusal is not None:
            refused[i] = RowError(lines[i], str(_refusal_error(codes[cid], refusal)), keys[i])
    return [r for i, r in enumerate(rows) if i not in refused], list(refused.values())


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

"""The review queue: flagged cores -> ``review_items``, and what the queue holds.

- **Items**: one per (core, review round); at most one *active* item (open, claimed, expired,
  skipped) per core, enforced by a partial unique index, so re-building the queue never
  duplicates an open item. Excluded cores are never queued. Items come from the flags
  (:func:`queue_flagged`) or by hand (:func:`add_items`).
- **Reading**: items with their holder and lease (:func:`list_items`), counts per status
  (:func:`queue_counts`), and the look-ups the claims and the reviewer's view share (current
  consensus labels, an item, who holds it).

Claims, leases and votes on the items live in :mod:`her2ops.platform.review_claims`.

Flags are computed by the caller (``her2ops.models.flags`` through the review pipeline); this
module only stores and serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound
from her2ops.platform.schema import (
    REVIEW_ACTIVE_STATUSES,
    REVIEW_MODES,
    REVIEW_STATUSES,
    ConsensusLabel,
    Core,
    ReviewItem,
    User,
)

MANUAL_PRIORITY = 1.0


@dataclass(frozen=True)
class FlaggedCore:
    """A core the flags raised, ready to be queued."""

    core_id: int
    priority: float
    reasons: list[dict[str, Any]]
    model_version_ids: list[int]
    prediction_id: int | None = None


@dataclass
class QueueReport:
    added: list[str] = field(default_factory=list)
    already_queued: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "already_queued": len(self.already_queued),
            "excluded": len(self.excluded),
            "cores": self.added,
        }


# --- look-ups ----------------------------------------------------------------------------------


def current_labels(session: Session, core_ids: Sequence[int]) -> dict[int, tuple[str, int | None]]:
    """Current consensus (status, score) per core; cores without a label are absent."""
    out: dict[int, tuple[str, int | None]] = {}
    ids = sorted(set(core_ids))
    for i in range(0, len(ids), 5000):
        q = select(ConsensusLabel.core_id, ConsensusLabel.status, ConsensusLabel.score).where(
            ConsensusLabel.core_id.in_(ids[i : i + 5000]), ConsensusLabel.is_current.is_(True)
        )
        out.update({c: (st, sc) for c, st, sc in session.execute(q)})
    return out


def _active_cores(session: Session, core_ids: Sequence[int]) -> set[int]:
    return set(
        session.scalars(
            select(ReviewItem.core_id).where(
                ReviewItem.core_id.in_(sorted(set(core_ids))),
                ReviewItem.status.in_(REVIEW_ACTIVE_STATUSES),
            )
        )
    )


def _next_rounds(session: Session, core_ids: Sequence[int]) -> dict[int, int]:
    q = (
        select(ReviewItem.core_id, func.max(ReviewItem.round))
        .where(ReviewItem.core_id.in_(sorted(set(core_ids))))
        .group_by(ReviewItem.core_id)
    )
    return {c: int(r) + 1 for c, r in session.execute(q)}


def aware(at: datetime | None) -> datetime | None:
    """A stored time as UTC-aware (SQLite hands back naive values)."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def get_item(session: Session, item_id: int) -> ReviewItem:
    """The review item ``item_id``; ``NotFound`` names an unknown one."""
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise NotFound(f"unknown review item {item_id}")
    return item


def holder(session: Session, item: ReviewItem) -> str | None:
    """The username of whoever holds the item's claim (None: unclaimed)."""
    if item.claimed_by_id is None:
        return None
    return session.scalar(select(User.username).where(User.id == item.claimed_by_id))


# --- filling the queue -------------------------------------------------------------------------


def _check_mode(mode: str, votes_needed: int) -> None:
    if mode not in REVIEW_MODES:
        raise InvalidRequest(f"bad review mode {mode!r}: expected one of {', '.join(REVIEW_MODES)}")
    if votes_needed < 1:
        raise InvalidRequest(f"votes needed must be at least 1, got {votes_needed}")


def queue_flagged(
    session: Session,
    *,
    actor: str | None,
    flagged: Sequence[FlaggedCore],
    top: int | None = None,
    mode: str = "blinded",
    votes_needed: int = 1,
) -> QueueReport:
    """Queue the highest-priority flagged cores (at most ``top`` new items); cores with an
    active item or an excluded label are left out."""
    user = require(session, actor, "review.enqueue")
    _check_mode(mode, votes_needed)
    if top is not None and top < 1:
        raise InvalidRequest(f"--top must be at least 1, got {top}")
    ids = [f.core_id for f in flagged]
    codes = dict(session.execute(select(Core.id, Core.code).where(Core.id.in_(ids))).all())
    labels = current_labels(session, ids)
    active = _active_cores(session, ids)
    report = QueueReport()
    todo: list[FlaggedCore] = []
    for f in sorted(flagged, key=lambda f: (-f.priority, f.core_id)):
        code = codes[f.core_id]
        if labels.get(f.core_id, ("", None))[0] == "excluded":
            report.excluded.append(code)
        elif f.core_id in active:
            report.already_queued.append(code)
        elif top is None or len(todo) < top:
            todo.append(f)
    rounds = _next_rounds(session, [f.core_id for f in todo])
    for f in todo:
        session.add(
            ReviewItem(
                core_id=f.core_id,
                round=rounds.get(f.core_id, 1),
                status="open",
                mode=mode,
                source="flags",
                priority=float(f.priority),
                reasons=f.reasons,
                model_version_ids=f.model_version_ids,
                prediction_id=f.prediction_id,
                votes_needed=votes_needed,
                created_by_id=user.id,
            )
        )
        report.added.append(codes[f.core_id])
    _flush_unique(session)
    if report.added:
        audit.record(
            session,
            actor=user,
            action="review.build",
            entity="review_items",
            details={**report.to_dict(), "mode": mode},
        )
    return report


def add_items(
    session: Session,
    *,
    actor: str | None,
    cores: Sequence[str],
    reason: str,
    mode: str = "blinded",
    votes_needed: int = 1,
    priority: float = MANUAL_PRIORITY,
) -> QueueReport:
    """Queue cores by hand (a lab manager's decision). Unknown or excluded cores: an error
    naming them and nothing queued; cores already queued are reported, not duplicated."""
    user = require(session, actor, "review.enqueue")
    _check_mode(mode, votes_needed)
    if not reason or not reason.strip():
        raise InvalidRequest("give a --reason for queueing cores by hand")
    if not cores:
        raise InvalidRequest("name at least one core")
    rows = dict(session.execute(select(Core.code, Core.id).where(Core.code.in_(cores))).all())
    missing = sorted(set(cores) - set(rows))
    if missing:
        raise NotFound(f"unknown core(s): {', '.join(missing)}")
    labels = current_labels(session, list(rows.values()))
    excluded = sorted(c for c, i in rows.items() if labels.get(i, ("", None))[0] == "excluded")
    if excluded:
        raise Conflict(
            f"core(s) excluded by the consensus cannot be reviewed: {', '.join(excluded)}"
        )
    flagged = [
        FlaggedCore(rows[c], priority, [{"flag": "manual", "score": 1.0, "reason": reason}], [])
        for c in dict.fromkeys(cores)
    ]
    active = _active_cores(session, [f.core_id for f in flagged])
    rounds = _next_rounds(session, [f.core_id for f in flagged])
    report = QueueReport()
    by_id = {i: c for c, i in rows.items()}
    for f in flagged:
        if f.core_id in active:
            report.already_queued.append(by_id[f.core_id])
            continue
        session.add(
            ReviewItem(
                core_id=f.core_id,
                round=rounds.get(f.core_id, 1),
                mode=mode,
                source="manual",
                priority=priority,
                reasons=f.reasons,
                model_version_ids=[],
                votes_needed=votes_needed,
                created_by_id=user.id,
            )
        )
        report.added.append(by_id[f.core_id])
    _flush_unique(session)
    if report.added:
        audit.record(
            session,
            actor=user,
            action="review.add",
            entity="review_items",
            details={"cores": report.added, "reason": reason, "mode": mode},
        )
    return report


def _flush_unique(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(
            "another process queued some of these cores at the same time; run it again"
        ) from None


# --- reading -----------------------------------------------------------------------------------


def list_items(
    session: Session, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Items (highest priority first) with core, status, holder and lease."""
    if status is not None and status not in REVIEW_STATUSES:
        raise InvalidRequest(f"bad status {status!r}: expected one of {', '.join(REVIEW_STATUSES)}")
    q = (
        select(ReviewItem, Core.code, User.username)
        .join(Core, Core.id == ReviewItem.core_id)
        .outerjoin(User, User.id == ReviewItem.claimed_by_id)
        .order_by(ReviewItem.priority.desc(), ReviewItem.id)
        .limit(limit)
    )
    if status is not None:
        q = q.where(ReviewItem.status == status)
    return [
        {
            "item": it.id,
            "core": code,
            "round": it.round,
            "status": it.status,
            "mode": it.mode,
            "priority": round(it.priority, 4),
            "reasons": [r.get("flag") for r in it.reasons],
            "claimed_by": who,
            "lease_expires_at": aware(it.lease_expires_at),
            "votes": f"{it.votes_done}/{it.votes_needed}",
        }
        for it, code, who in session.execute(q)
    ]


def queue_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(ReviewItem.status, func.count()).group_by(ReviewItem.status)
    ).all()
    counts = {s: 0 for s in REVIEW_STATUSES}
    counts.update({s: int(n) for s, n in rows})
    return counts

"""The review queue: flagged cores -> ``review_items``; claims that never collide; votes.

- **Items**: one per (core, review round); at most one *active* item (open, claimed, expired,
  skipped) per core, enforced by a partial unique index, so re-building the queue never
  duplicates an open item. Excluded cores are never queued.
- **Claims** (:func:`claim_next`) take the highest-priority claimable item in ONE statement,
  ``UPDATE review_items SET ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 1)
  RETURNING id, fencing_token``; on SQLite the same UPDATE runs inside ``BEGIN IMMEDIATE`` (SQLite
  has one writer at a time, so the statement cannot interleave with another claim). Claimable:
  open, skipped (by someone else), expired, or claimed with a lapsed lease. The two candidates
  (best open item, best lapsed claim) each come from a partial index (on (priority, id) of the
  claimable rows, walked backwards: highest priority first, newest first among equals; on the
  lease of claimed rows), so a claim costs the same with 10 or 100,000 items queued. Never offered:
  a core the pathologist already voted on in this item's round, or whose adjudication vote is
  theirs, or an item they skipped. Each claim increments ``fencing_token``.
- **Votes** (:func:`submit`) are ``review`` votes (append-only, :func:`votes.cast_vote`), written
  only while the caller's fencing token is current; the core's consensus is recomputed in the same
  transaction (:func:`consensus.resolve_cores`, the lab's policy).

Flags are computed by the caller (``her2ops.models.flags`` through the review pipeline); this
module only stores and serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, cast, exists, func, literal, or_, select, text, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import String

from her2ops.config import get_settings
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.consensus import resolve_cores
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound
from her2ops.platform.schema import (
    REVIEW_ACTIVE_STATUSES,
    REVIEW_CLAIMABLE_STATUSES,
    REVIEW_MODES,
    REVIEW_STATUSES,
    ConsensusLabel,
    Core,
    ReviewItem,
    ReviewSkip,
    User,
    Vote,
    utcnow,
)
from her2ops.platform.votes import cast_vote
from her2ops.scores import parse_vote, vote_to_text

MANUAL_PRIORITY = 1.0
VOTE_SOURCE = "review-item:"


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


@dataclass(frozen=True)
class SubmitResult:
    item: int
    core: str
    vote_id: int
    score: str
    item_status: str
    label_before: tuple[str | None, int | None]
    label_after: tuple[str | None, int | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "core": self.core,
            "vote_id": self.vote_id,
            "score": self.score,
            "item_status": self.item_status,
            "label_before": {"status": self.label_before[0], "score": self.label_before[1]},
            "label_after": {"status": self.label_after[0], "score": self.label_after[1]},
            "label_changed": self.label_before != self.label_after,
        }


# --- transactions ------------------------------------------------------------------------------


def begin_write(session: Session) -> None:
    """On SQLite, take the write lock now (``BEGIN IMMEDIATE``) so that what this transaction
    reads cannot change before it writes; PostgreSQL locks rows instead (FOR UPDATE)."""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        return
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _lock_item(session: Session, item_id: int) -> ReviewItem:
    begin_write(session)
    item = session.scalar(select(ReviewItem).where(ReviewItem.id == item_id).with_for_update())
    if item is None:
        raise NotFound(f"unknown review item {item_id}")
    return item


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
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise NotFound(f"unknown review item {item_id}")
    return item


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


# --- claims ------------------------------------------------------------------------------------


def claim_next(
    session: Session, *, user_id: int, lease_s: int, now: datetime | None = None
) -> tuple[int, int] | None:
    """Claim the highest-priority claimable item for ``user_id`` in one statement; returns
    (item id, fencing token) or None when nothing is claimable for them."""
    now = now or utcnow()
    begin_write(session)
    # Core-level execution on the session's connection: the claim needs none of the ORM's
    # statement processing, and it is the hot path of every reviewer
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # A claim is soft state: if a crash lost it, the item is simply claimable again and the
        # claimer's submit is refused by its fencing token. So the claim's commit need not wait
        # for the WAL flush (votes, written by submit, always do).
        # The claim statement is prepared by the driver after a few runs; a generic plan spares
        # the planner (most of a claim's cost) on every later one.
        conn.execute(
            text(
                "SELECT set_config('synchronous_commit', 'off', true), "
                "set_config('plan_cache_mode', 'force_generic_plan', true)"
            )
        )
    ri = ReviewItem
    item_source = literal(VOTE_SOURCE, String) + cast(ri.id, String)
    voted = select(Vote.id).where(
        Vote.core_id == ri.core_id,
        Vote.user_id == user_id,
        or_(Vote.round == "adjudication", and_(Vote.round == "review", Vote.source == item_source)),
    )
    skipped = select(ReviewSkip.item_id).where(
        ReviewSkip.item_id == ri.id, ReviewSkip.user_id == user_id
    )
    excluded = select(ConsensusLabel.id).where(
        ConsensusLabel.core_id == ri.core_id,
        ConsensusLabel.is_current.is_(True),
        ConsensusLabel.status == "excluded",
    )
    eligible = (~exists(voted), ~exists(skipped), ~exists(excluded))
    # the best open item and the best lapsed claim, each found through its own partial index
    # and locked (rows other claimers hold are skipped); the better of the two is claimed
    best = []
    # statuses as SQL literals: a prepared (generic) plan can only use a partial index whose
    # predicate it can prove from the query text
    claimable = ", ".join(f"'{v}'" for v in REVIEW_CLAIMABLE_STATUSES)
    for status in (
        text(f"review_items.status IN ({claimable})"),
        and_(text("review_items.status = 'claimed'"), ri.lease_expires_at < now),
    ):
        q = (
            select(ri.id, ri.priority)
            .where(status, *eligible)
            .order_by(ri.priority.desc(), ri.id.desc())
            .limit(1)
        )
        if postgres:
            q = q.with_for_update(skip_locked=True)
        best.append(q.subquery().select())
    both = union_all(*best).subquery()
    candidate = select(both.c.id).order_by(both.c.priority.desc(), both.c.id.desc()).limit(1)
    stmt = (
        update(ri)
        .where(ri.id == candidate.scalar_subquery())
        .values(
            status="claimed",
            claimed_by_id=user_id,
            claimed_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            fencing_token=ri.fencing_token + 1,
        )
        .returning(ri.id, ri.fencing_token)
    )
    row = conn.execute(stmt).first()
    return (int(row[0]), int(row[1])) if row else None


def _lease_s(lease_s: int | None) -> int:
    value = lease_s if lease_s is not None else get_settings().review_lease_s
    if value < 1:
        raise InvalidRequest(f"lease must be at least 1 s, got {value}")
    return value


def next_item(
    session: Session, *, actor: str | None, lease_s: int | None = None
) -> ReviewItem | None:
    """The acting pathologist's live claim, or a new claim on the best item for them."""
    user = require(session, actor, "votes.cast")
    lease = _lease_s(lease_s)
    now = utcnow()
    begin_write(session)  # on SQLite: no second claim of the same user between check and claim
    held = session.scalar(
        select(ReviewItem)
        .where(
            ReviewItem.claimed_by_id == user.id,
            ReviewItem.status == "claimed",
            ReviewItem.lease_expires_at >= now,
        )
        .order_by(ReviewItem.priority.desc(), ReviewItem.id)
        .limit(1)
    )
    if held is not None:
        return held
    got = claim_next(session, user_id=user.id, lease_s=lease, now=now)
    if got is None:
        return None
    item = get_item(session, got[0])
    session.refresh(item)
    audit.record(
        session,
        actor=user,
        action="review.claim",
        entity="review_item",
        key=str(item.id),
        details={"token": got[1]},
    )
    return item


def _owned(item: ReviewItem, user: User, token: int | None, who: str | None) -> None:
    """Refuse unless ``user`` still holds ``item`` (and ``token`` is current when given)."""
    if item.status == "done":
        raise Conflict(f"review item {item.id} is already done")
    if item.claimed_by_id != user.id or item.status not in ("claimed", "expired"):
        holder = f"by {who}" if who and item.status == "claimed" else "by no one"
        raise Conflict(
            f"review item {item.id} is not claimed by {user.username} (it is {item.status}, "
            f"claimed {holder}); claim one with 'her2ops review next'"
        )
    if token is not None and token != item.fencing_token:
        raise Conflict(
            f"your claim on review item {item.id} is no longer current (token {token}, now "
            f"{item.fencing_token}): it expired and was claimed again; nothing was recorded"
        )


def holder(session: Session, item: ReviewItem) -> str | None:
    if item.claimed_by_id is None:
        return None
    return session.scalar(select(User.username).where(User.id == item.claimed_by_id))


def renew(
    session: Session,
    *,
    actor: str | None,
    item_id: int,
    token: int | None = None,
    lease_s: int | None = None,
) -> ReviewItem:
    """Extend the acting pathologist's lease on their claim."""
    user = require(session, actor, "votes.cast")
    lease = _lease_s(lease_s)
    item = _lock_item(session, item_id)
    _owned(item, user, token, holder(session, item))
    item.status = "claimed"
    item.lease_expires_at = utcnow() + timedelta(seconds=lease)
    return item


def release(
    session: Session, *, actor: str | None, item_id: int, token: int | None = None
) -> ReviewItem:
    """Give a claim back to the queue unchanged."""
    user = require(session, actor, "votes.cast")
    item = _lock_item(session, item_id)
    _owned(item, user, token, holder(session, item))
    item.status, item.claimed_by_id, item.lease_expires_at = "open", None, None
    audit.record(
        session, actor=user, action="review.release", entity="review_item", key=str(item.id)
    )
    return item


def skip(
    session: Session, *, actor: str | None, item_id: int, token: int | None = None
) -> ReviewItem:
    """Give a claim back and never be offered this item again; others still may take it."""
    user = require(session, actor, "votes.cast")
    item = _lock_item(session, item_id)
    _owned(item, user, token, holder(session, item))
    item.status, item.claimed_by_id, item.lease_expires_at = "skipped", None, None
    session.add(ReviewSkip(item_id=item.id, user_id=user.id))
    audit.record(session, actor=user, action="review.skip", entity="review_item", key=str(item.id))
    return item


def expire_leases(session: Session, *, now: datetime | None = None) -> int:
    """Mark claims whose lease lapsed as ``expired`` (claimable again); returns how many.
    Claims do not need this sweep (a lapsed lease is claimable as it is); it keeps the listed
    statuses honest."""
    now = now or utcnow()
    result = session.execute(
        update(ReviewItem)
        .where(ReviewItem.status == "claimed", ReviewItem.lease_expires_at < now)
        .values(status="expired")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- votes -------------------------------------------------------------------------------------


def submit(
    session: Session,
    *,
    actor: str | None,
    item_id: int,
    score: str,
    comment: str | None = None,
    token: int | None = None,
) -> SubmitResult:
    """Record the acting pathologist's ``review`` vote on their claimed item and recompute the
    core's consensus, in one transaction; refused (nothing written) unless the claim is theirs
    with a current fencing token."""
    user = require(session, actor, "votes.cast")
    try:
        vote_text = vote_to_text(parse_vote(score))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    item = _lock_item(session, item_id)
    _owned(item, user, token, holder(session, item))
    code = session.scalar(select(Core.code).where(Core.id == item.core_id))
    assert code is not None
    before = current_labels(session, [item.core_id]).get(item.core_id, (None, None))
    if before[0] == "excluded":
        raise Conflict(f"core {code} was excluded by the consensus; it cannot be reviewed")
    vote = cast_vote(
        session,
        actor=user.username,
        core=code,
        score=vote_text,
        round="review",
        comment=comment,
        source=f"{VOTE_SOURCE}{item.id}",
    )
    item.votes_done += 1
    item.lease_expires_at = None
    if item.votes_done >= item.votes_needed:
        item.status, item.done_at = "done", utcnow()
    else:
        item.status, item.claimed_by_id = "open", None
    resolve_cores(session, actor=user, core_ids=[item.core_id])
    after = current_labels(session, [item.core_id]).get(item.core_id, (None, None))
    audit.record(
        session,
        actor=user,
        action="review.submit",
        entity="review_item",
        key=str(item.id),
        details={"core": code, "score": vote_text, "vote_id": vote.id, "token": item.fencing_token},
    )
    return SubmitResult(item.id, code, vote.id, vote_text, item.status, before, after)


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

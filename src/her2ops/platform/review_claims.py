"""Claims on review items that never collide, their leases, and the votes they lead to.

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
- **Leases**: the holder renews (:func:`renew`), releases (:func:`release`) or skips
  (:func:`skip`) their claim; :func:`expire_leases` marks lapsed ones ``expired``.
- **Votes** (:func:`submit`) are ``review`` votes (append-only, :func:`votes.cast_vote`), written
  only while the caller's fencing token is current; the core's consensus is recomputed in the same
  transaction (:func:`consensus.resolve_cores`, the lab's policy).

The items themselves are queued and listed by :mod:`her2ops.platform.review`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, cast, exists, literal, or_, select, text, union_all, update
from sqlalchemy.orm import Session
from sqlalchemy.types import String

from her2ops.config import get_settings
from her2ops.platform import audit
from her2ops.platform.access import require
from her2ops.platform.consensus import resolve_cores
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound
from her2ops.platform.review import current_labels, get_item, holder
from her2ops.platform.schema import (
    REVIEW_CLAIMABLE_STATUSES,
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

VOTE_SOURCE = "review-item:"


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

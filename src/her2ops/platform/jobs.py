"""The jobs table: every piece of background work is a row here first.

Submission is idempotent (a unique key; a second submission of the same work returns the first
row, also under concurrent submitters: INSERT ... ON CONFLICT DO NOTHING). A worker *claims* a
queued job in one UPDATE that takes a lease and increments the fencing token; every later write
of that worker (progress, lease renewal, result, failure) names the token in the WHERE clause of
the same UPDATE that writes, so a worker whose lease expired and was taken over writes nothing
(:class:`LeaseLost`). ``max_attempts`` is enforced here, not by the broker, which cannot count a
message whose worker died.

Times are computed in Python (UTC); workers' clocks are assumed to agree within a lease.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from her2ops.platform import audit
from her2ops.platform.access import get_user
from her2ops.platform.errors import Conflict, InvalidRequest, NotFound
from her2ops.platform.schema import JOB_STATUSES, Job, User, utcnow

ACTIVE = ("queued", "running")
DONE = ("succeeded", "failed", "cancelled")


class LeaseLost(Conflict):
    """This worker no longer holds the job (lease expired and another claim, or job ended)."""


class JobCancelled(Exception):
    """Raised inside a running job when a user asked to cancel it (not an error)."""


@dataclass(frozen=True)
class Claim:
    """What a worker holds after a successful claim."""

    job_id: int
    kind: str
    params: dict[str, Any]
    token: int
    attempt: int
    max_attempts: int
    actor: str | None


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes (stored in UTC by us); make them aware."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def default_key(kind: str, params: dict[str, Any]) -> str:
    """``kind:sha256(canonical params)``: the same work gives the same key."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"{kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def submit(
    session: Session,
    *,
    kind: str,
    queue: str,
    params: dict[str, Any],
    actor: str | None,
    max_attempts: int,
    key: str | None = None,
    parent_id: int | None = None,
) -> tuple[Job, bool]:
    """Insert the job unless its idempotency key exists; returns (job, created).

    The caller sends the message only after its transaction commits (see ``platform.broker``).
    """
    user = get_user(session, actor) if actor else None
    key = key or default_key(kind, params)
    if len(key) > 256:
        raise InvalidRequest("idempotency key longer than 256 characters")
    values = {
        "kind": kind,
        "queue": queue,
        "params": params,
        "idempotency_key": key,
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "fencing_token": 0,
        "cancel_requested": False,
        "created_by_id": user.id if user else None,
        "parent_id": parent_id,
        "created_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert_fn(Job)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Job.id)
    )
    new_id = session.execute(stmt).scalar()
    job = session.scalar(select(Job).where(Job.idempotency_key == key))
    if job is None:  # pragma: no cover - the row exists by now, inserted by us or another
        raise Conflict(f"job with key {key!r} vanished")
    created = new_id is not None
    if created:
        audit.record(
            session,
            actor=user,
            action="jobs.submit",
            entity="job",
            key=str(job.id),
            details={"kind": kind},
        )
    return job, created


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    status: Sequence[str] | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """Newest first."""
    query: Select[Job] = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        bad = sorted(set(status) - set(JOB_STATUSES))
        if bad:
            raise InvalidRequest(
                f"unknown status {', '.join(bad)}; use one of {', '.join(JOB_STATUSES)}"
            )
        query = query.where(Job.status.in_(list(status)))
    if kind:
        query = query.where(Job.kind == kind)
    return list(session.scalars(query))


def claim(session: Session, *, job_id: int, worker: str, lease_seconds: float) -> Claim | None:
    """Take a queued job in one UPDATE (lease + new fencing token); None if it is not claimable.

    A job that already used its attempts is not claimable (``expire_leases`` fails it).
    """
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "queued",
            Job.attempts < Job.max_attempts,
            Job.cancel_requested.is_(False),
            or_(Job.run_after.is_(None), Job.run_after <= now),
        )
        .values(
            status="running",
            attempts=Job.attempts + 1,
            fencing_token=Job.fencing_token + 1,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            progress_at=now,
            error=None,
            error_detail=None,
        )
        .returning(
            Job.kind,
            Job.params,
            Job.fencing_token,
            Job.attempts,
            Job.max_attempts,
            Job.created_by_id,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    actor = session.scalar(select(User.username).where(User.id == row[5])) if row[5] else None
    return Claim(job_id, row[0], dict(row[1]), row[2], row[3], row[4], actor)


def _fenced(job_id: int, token: int) -> Any:
    return update(Job).where(Job.id == job_id, Job.fencing_token == token, Job.status == "running")


def renew(
    session: Session,
    *,
    job_id: int,
    token: int,
    lease_seconds: float,
    progress: tuple[int, int | None, str] | None = None,
) -> bool:
    """Extend the lease (and record progress); returns whether a cancel was requested.

    Raises :class:`LeaseLost` when the token is no longer current.
    """
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds)}
    if progress is not None:
        done, total, message = progress
        values |= {
            "progress_done": done,
            "progress_total": total,
            "progress_message": message[:500],
            "progress_at": now,
        }
    row = session.execute(
        _fenced(job_id, token)
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        raise LeaseLost(f"job {job_id}: lease lost (fencing token {token} is no longer current)")
    return bool(row[0])


def finish(session: Session, *, job_id: int, token: int, result: dict[str, Any]) -> None:
    """Record success; the fencing token is checked by the same UPDATE."""
    res = session.execute(
        _fenced(job_id, token)
        .values(
            status="succeeded",
            result=result,
            finished_at=utcnow(),
            lease_expires_at=None,
            error=None,
            error_detail=None,
        )
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: result refused, fencing token {token} is not current")


def fail(
    session: Session,
    *,
    job_id: int,
    token: int,
    error: str,
    detail: str | None,
    retryable: bool,
) -> str:
    """Record a failed attempt; returns the new status (``queued`` to retry, or ``failed``).

    A retryable failure goes back to ``queued`` while attempts remain (the caller sends a new
    message after commit); a user error (``retryable=False``) fails at once.
    """
    now = utcnow()
    line = error.strip().splitlines()[0][:1000] if error.strip() else "error"
    common = {"error": line, "error_detail": detail, "lease_expires_at": None}
    if retryable:
        res = session.execute(
            _fenced(job_id, token)
            .where(Job.attempts < Job.max_attempts, Job.cancel_requested.is_(False))
            .values(status="queued", worker=None, dispatched_at=None, **common)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            return "queued"
    res = session.execute(
        _fenced(job_id, token)
        .values(status="failed", finished_at=now, **common)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: failure not recorded, fencing token {token} not current")
    return "failed"


def defer(
    session: Session,
    *,
    job_id: int,
    token: int,
    seconds: float,
    progress: tuple[int, int | None, str] | None = None,
) -> None:
    """Put a running job back in the queue until ``seconds`` from now, without using up an
    attempt (a parent waiting for its children). The dispatcher sends it when it is due.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": "queued",
        "attempts": Job.attempts - 1,
        "worker": None,
        "lease_expires_at": None,
        "dispatched_at": None,
        "run_after": now + timedelta(seconds=seconds),
    }
    if progress is not None:
        values |= {
            "progress_done": progress[0],
            "progress_total": progress[1],
            "progress_message": progress[2],
            "progress_at": now,
        }
    res = session.execute(
        _fenced(job_id, token).values(**values).execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: deferral refused, fencing token {token} not current")


def children(session: Session, parent_id: int) -> list[Job]:
    """The jobs a parent fanned out, oldest first."""
    return list(session.scalars(select(Job).where(Job.parent_id == parent_id).order_by(Job.id)))


def mark_cancelled(session: Session, *, job_id: int, token: int) -> None:
    """The running job stopped because a cancel was requested."""
    res = session.execute(
        _fenced(job_id, token)
        .values(status="cancelled", finished_at=utcnow(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {job_id}: cancel not recorded, fencing token {token} not current")


def cancel(session: Session, *, job_id: int, actor: str | None) -> str:
    """Cancel a queued job now, or ask a running one to stop; returns the status it has after."""
    user = get_user(session, actor)
    job = get_job(session, job_id)
    if job.status in DONE:
        raise Conflict(f"job {job_id} is already {job.status}")
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        # running (or claimed meanwhile): its worker sees the request at its next heartbeat
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    audit.record(session, actor=user, action="jobs.cancel", entity="job", key=str(job_id))
    session.expire(job)
    return get_job(session, job_id).status


def retry(session: Session, *, job_id: int, actor: str | None) -> Job:
    """Queue a failed job again with fresh attempts (the caller sends after commit)."""
    user = get_user(session, actor)
    job = get_job(session, job_id)
    if job.status != "failed":
        hint = " (submit it again with a new key)" if job.status == "cancelled" else ""
        raise Conflict(f"job {job_id} is {job.status}; only a failed job can be retried{hint}")
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "failed")
        .values(
            status="queued",
            attempts=0,
            worker=None,
            dispatched_at=None,
            finished_at=None,
            lease_expires_at=None,
            error=None,
            error_detail=None,
            progress_done=None,
            progress_total=None,
            progress_message=None,
            result=None,
            run_after=None,
        )
        .execution_options(synchronize_session=False)
    )
    audit.record(session, actor=user, action="jobs.retry", entity="job", key=str(job_id))
    session.expire(job)
    return get_job(session, job_id)


def expire_leases(session: Session, *, job_id: int | None = None) -> dict[str, list[int]]:
    """Running jobs whose lease expired: back to ``queued``, or ``failed``/``cancelled``.

    A worker that died (SIGKILL, OOM, machine lost) or stalled stops renewing its lease. Its
    job goes back to the queue while attempts remain; after ``max_attempts`` it fails, so a
    job that kills its worker every time does not loop forever. Each transition is one
    conditional UPDATE, safe with several dispatchers.
    """
    now = utcnow()
    expired = [
        Job.status == "running",
        Job.lease_expires_at < now,
    ]
    if job_id is not None:
        expired.append(Job.id == job_id)
    out: dict[str, list[int]] = {}
    for status, extra, values in (
        ("cancelled", [Job.cancel_requested.is_(True)], {"finished_at": now}),
        (
            "failed",
            [Job.attempts >= Job.max_attempts],
            {
                "finished_at": now,
                "error": func.coalesce(
                    Job.error, "the worker was lost (killed or stalled) on every attempt"
                ),
            },
        ),
        ("queued", [], {"worker": None, "dispatched_at": None}),
    ):
        ids = session.scalars(
            update(Job)
            .where(*expired, *extra)
            .values(status=status, lease_expires_at=None, **values)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        ).all()
        if ids:
            out[status] = list(ids)
    return out


def take_for_dispatch(
    session: Session, *, redispatch_after: float, limit: int = 100
) -> list[tuple[int, str, str]]:
    """Queued jobs with no message yet (or one sent long ago): mark them sent now and return
    (id, kind, queue). Each row is taken by one conditional UPDATE, so two dispatchers never
    both send the same row in one round.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=redispatch_after)
    due = and_(
        or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff),
        or_(Job.run_after.is_(None), Job.run_after <= now),
    )
    candidates = session.scalars(
        select(Job.id).where(Job.status == "queued", due).order_by(Job.id).limit(limit)
    ).all()
    taken: list[tuple[int, str, str]] = []
    for jid in candidates:
        row = session.execute(
            update(Job)
            .where(Job.id == jid, Job.status == "queued", due)
            .values(dispatched_at=now)
            .returning(Job.id, Job.kind, Job.queue)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if row is not None:
            taken.append((row[0], row[1], row[2]))
    return taken


def mark_dispatched(session: Session, *, job_ids: Sequence[int]) -> None:
    """Record that a message was sent for these queued jobs."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == "queued")
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def clear_dispatched(session: Session, *, job_ids: Sequence[int]) -> None:
    """The send failed: leave these jobs in the dispatcher's outbox for its next round."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == "queued")
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )


def job_to_dict(job: Job, *, created_by: str | None = None) -> dict[str, Any]:
    """A plain view of the row for the CLI and dashboards (no traceback unless failed)."""
    started, finished = as_utc(job.started_at), as_utc(job.finished_at)
    seconds = (finished - started).total_seconds() if started and finished else None
    return {
        "id": job.id,
        "kind": job.kind,
        "queue": job.queue,
        "status": job.status,
        "params": job.params,
        "key": job.idempotency_key,
        "progress": {
            "done": job.progress_done,
            "total": job.progress_total,
            "message": job.progress_message,
            "at": as_utc(job.progress_at),
        },
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker": job.worker,
        "lease_expires_at": as_utc(job.lease_expires_at),
        "cancel_requested": job.cancel_requested,
        "result": job.result,
        "error": job.error,
        "error_detail": job.error_detail,
        "created_by": created_by,
        "parent_id": job.parent_id,
        "created_at": as_utc(job.created_at),
        "dispatched_at": as_utc(job.dispatched_at),
        "run_after": as_utc(job.run_after),
        "started_at": started,
        "finished_at": finished,
        "seconds": seconds,
    }

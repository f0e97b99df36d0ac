"""Background jobs, the use cases: submit, list, show, cancel, retry, wait; run one; dispatch.

``submit_job`` checks the work completely (``job_kinds``) before anything is enqueued, writes the
``jobs`` row and sends the message after that transaction commits. ``run_job`` is what a worker
task calls with a job id: claim (lease + fencing token), run the kind's use case with a progress
callback that writes to the row (at most once a second) and renews the lease, then record the
result with the token checked in the same UPDATE. ``dispatch_once`` is one round of the
dispatcher: expire dead workers' leases and (re-)send queued rows without a live message.

Logs: one JSON line per job start and finish (``her2ops.jobs`` logger) with the job id, kind,
attempt and worker; never parameters, patient or core codes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from typing import Any

from sqlalchemy import select

from her2ops.config import get_settings
from her2ops.errors import Her2opsError
from her2ops.pipelines.job_kinds import (
    CURRENT_JOB,
    Deferred,
    available_kinds,
    get_kind,
    normalise_params,
)
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import jobs
from her2ops.platform.access import require
from her2ops.platform.broker import send, send_after_commit
from her2ops.platform.jobs import Claim, JobCancelled, LeaseLost
from her2ops.platform.schema import Job, User

log = logging.getLogger("her2ops.jobs")


def _event(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, default=str))


def _view(session: Any, job: Job) -> dict[str, Any]:
    user = session.scalar(select(User.username).where(User.id == job.created_by_id))
    return jobs.job_to_dict(job, created_by=user)


# --- use cases for people -------------------------------------------------------------------


def submit_job(
    *,
    actor: str | None,
    kind: str,
    params: dict[str, Any] | None = None,
    key: str | None = None,
    max_attempts: int | None = None,
    parent_id: int | None = None,
) -> dict[str, Any]:
    """Check and record a job; its message goes out after the commit. Same work -> same job.

    Returns the job (``created`` False when the idempotency key already existed).
    """
    spec = get_kind(kind)
    settings = get_settings()
    with get_runtime().session() as s:
        normalised = normalise_params(s, spec, actor, dict(params or {}))
        job, created = jobs.submit(
            s,
            kind=spec.name,
            queue=spec.queue,
            params=normalised,
            actor=actor,
            max_attempts=max_attempts or settings.job_max_attempts,
            key=key,
            parent_id=parent_id,
        )
        if created:
            send_after_commit(s, job_id=job.id, kind=job.kind, queue=job.queue)
        job_id = job.id
    with get_runtime().session() as s:
        view = _view(s, jobs.get_job(s, job_id))
    view["created"] = created
    return view


def _known(session: Any, actor: str | None) -> None:
    """Reading the jobs table is a read of the models' work (``models.read``)."""
    require(session, actor, "models.read")


def list_jobs(
    *, actor: str | None, status: list[str] | None = None, kind: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    with get_runtime().session() as s:
        _known(s, actor)
        return [_view(s, j) for j in jobs.list_jobs(s, status=status, kind=kind, limit=limit)]


def show_job(*, actor: str | None, job_id: int) -> dict[str, Any]:
    with get_runtime().session() as s:
        _known(s, actor)
        return _view(s, jobs.get_job(s, job_id))


def _require_for(session: Any, actor: str | None, job: Job) -> None:
    kinds = available_kinds()
    permission = kinds[job.kind].permission if job.kind in kinds else "models.train"
    require(session, actor, permission)


def cancel_job(*, actor: str | None, job_id: int) -> dict[str, Any]:
    """Cancel a queued job, or ask a running one to stop at its next progress report."""
    with get_runtime().session() as s:
        _require_for(s, actor, jobs.get_job(s, job_id))
        jobs.cancel(s, job_id=job_id, actor=actor)
        for child in jobs.children(s, job_id):  # an ensemble's members go with it
            if child.status in jobs.ACTIVE:
                jobs.cancel(s, job_id=child.id, actor=actor)
    return show_job(actor=actor, job_id=job_id)


def retry_job(*, actor: str | None, job_id: int) -> dict[str, Any]:
    """Queue a failed job again with fresh attempts."""
    with get_runtime().session() as s:
        _require_for(s, actor, jobs.get_job(s, job_id))
        job = jobs.retry(s, job_id=job_id, actor=actor)
        send_after_commit(s, job_id=job.id, kind=job.kind, queue=job.queue)
    return show_job(actor=actor, job_id=job_id)


def wait_job(
    *, actor: str | None, job_id: int, timeout: float | None = None, poll: float = 0.5
) -> dict[str, Any]:
    """Poll until the job ends (or ``timeout`` seconds pass); returns its last state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        view = show_job(actor=actor, job_id=job_id)
        if view["status"] in jobs.DONE:
            return view
        if deadline is not None and time.monotonic() >= deadline:
            return view
        time.sleep(poll)


# --- the worker side ------------------------------------------------------------------------


class _Lease:
    """Renews the lease in a thread and turns the row's state into exceptions for the job.

    The thread runs in the process that runs the job, so a stalled or killed process stops
    renewing and its lease expires, which is the point. Progress is written at most once a
    second, in the same fenced UPDATE that renews the lease.
    """

    def __init__(self, claim: Claim, lease_seconds: float, min_interval: float = 1.0):
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.min_interval = min_interval
        self.cancelled = False
        self.lost: LeaseLost | None = None
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{claim.job_id}", daemon=True
        )

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _renew(self, progress: tuple[int, int | None, str] | None) -> None:
        with self._lock:
            if self.lost is not None:
                return
            try:
                with get_runtime().session() as s:
                    self.cancelled = jobs.renew(
                        s,
                        job_id=self.claim.job_id,
                        token=self.claim.token,
                        lease_seconds=self.lease_seconds,
                        progress=progress,
                    )
            except LeaseLost as exc:
                self.lost = exc
            self._last_write = time.monotonic()

    def _beat(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self._renew(None)
            except Exception as exc:  # database blip: try again next beat; the lease may lapse
                _event("job.renew_failed", job=self.claim.job_id, error=type(exc).__name__)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost
        if self.cancelled:
            raise JobCancelled()

    def progress(self, done: int, total: int | None, message: str) -> None:
        """The use case's progress callback."""
        if time.monotonic() - self._last_write >= self.min_interval:
            self._renew((done, total, message))
        self.check()


def run_job(job_id: int, *, worker: str, kind: str | None = None) -> str:
    """Claim and run one job; returns what happened (a status, 'skipped' or 'lease_lost').

    A message for a job that is not claimable (done, running under a live lease, cancelled,
    unknown) is acknowledged and dropped: the jobs table, not the broker, decides what runs.
    """
    settings = get_settings()
    lease_seconds = settings.job_lease_seconds
    with get_runtime().session() as s:
        jobs.expire_leases(s, job_id=job_id)  # a redelivered message of a dead worker's job
    with get_runtime().session() as s:
        claim = jobs.claim(s, job_id=job_id, worker=worker, lease_seconds=lease_seconds)
    if claim is None:
        _event("job.skip", job=job_id, worker=worker)
        return "skipped"
    if kind is not None and claim.kind != kind:
        _event("job.kind_mismatch", job=job_id, kind=claim.kind, task_kind=kind)
    _event(
        "job.start",
        job=job_id,
        kind=claim.kind,
        attempt=claim.attempt,
        max_attempts=claim.max_attempts,
        worker=worker,
    )
    t0 = time.monotonic()
    outcome = "lease_lost"
    try:
        with _Lease(claim, lease_seconds) as lease:
            outcome = _execute(claim, lease)
    except LeaseLost:
        outcome = "lease_lost"
    _event(
        "job.finish",
        job=job_id,
        kind=claim.kind,
        attempt=claim.attempt,
        status=outcome,
        seconds=round(time.monotonic() - t0, 3),
        worker=worker,
    )
    return outcome


def _execute(claim: Claim, lease: _Lease) -> str:
    kinds = available_kinds()
    try:
        if claim.kind not in kinds:
            raise Her2opsError(f"this worker does not run {claim.kind!r} jobs")
        token = CURRENT_JOB.set(claim)
        try:
            result = kinds[claim.kind].run(claim.actor, claim.params, lease.progress)
        finally:
            CURRENT_JOB.reset(token)
        lease.check()
    except Deferred as wait:
        with get_runtime().session() as s:
            jobs.defer(
                s,
                job_id=claim.job_id,
                token=claim.token,
                seconds=wait.seconds,
                progress=wait.progress,
            )
        return "deferred"
    except JobCancelled:
        with get_runtime().session() as s:
            jobs.mark_cancelled(s, job_id=claim.job_id, token=claim.token)
        return "cancelled"
    except LeaseLost:
        raise
    except Her2opsError as exc:
        # a user error known to the use case: the same input fails the same way, no retry
        with get_runtime().session() as s:
            return jobs.fail(
                s,
                job_id=claim.job_id,
                token=claim.token,
                error=str(exc),
                detail=None,
                retryable=False,
            )
    except Exception as exc:
        detail = traceback.format_exc()
        with get_runtime().session() as s:
            status = jobs.fail(
                s,
                job_id=claim.job_id,
                token=claim.token,
                error=f"{type(exc).__name__}: {exc}",
                detail=detail,
                retryable=True,
            )
            if status == "queued":
                send_after_commit(s, job_id=claim.job_id, kind=claim.kind, queue=_queue(claim))
        return "retry" if status == "queued" else status
    with get_runtime().session() as s:
        jobs.finish(s, job_id=claim.job_id, token=claim.token, result=result)
    return "succeeded"


def _queue(claim: Claim) -> str:
    return available_kinds()[claim.kind].queue


def dispatch_once() -> dict[str, list[int]]:
    """One dispatcher round: expire leases of lost workers, then send queued rows' messages."""
    settings = get_settings()
    with get_runtime().session() as s:
        changed = jobs.expire_leases(s)
    for status, ids in changed.items():
        for jid in ids:
            _event("job.lease_expired", job=jid, now=status)
    with get_runtime().session() as s:
        due = jobs.take_for_dispatch(s, redispatch_after=settings.job_redispatch_seconds)
    unsent = [jid for jid, kind, queue in due if not send(jid, kind, queue)]
    if unsent:
        with get_runtime().session() as s:
            jobs.clear_dispatched(s, job_ids=unsent)
    for jid, kind, _ in due:
        if jid not in unsent:
            _event("job.dispatch", job=jid, kind=kind)
    return {**changed, "sent": [d[0] for d in due if d[0] not in unsent], "unsent": unsent}

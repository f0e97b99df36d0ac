"""The jobs table and its use cases, on SQLite and PostgreSQL, with the embedded broker.

No worker here (see test_workers.py): submission checks, idempotency under concurrent
submitters, sending only after the outer commit, claim/lease/fencing, max attempts, cancel and
retry, and ``run_job`` in-process.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from her2ops.config import get_settings
from her2ops.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from her2ops.pipelines import jobs as use
from her2ops.platform import jobs
from her2ops.platform.broker import queued_messages, send_after_commit
from her2ops.platform.db import session_scope
from her2ops.platform.jobs import LeaseLost
from her2ops.platform.schema import Job, utcnow
from tests.factories import insert_labelled_cores, seed_users


@pytest.fixture(autouse=True)
def _selftest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "1")
    get_settings.cache_clear()


def _count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _expire_now(job_id: int) -> None:
    """Make the running job's lease lapse (as if its worker had stalled)."""
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


@pytest.mark.parametrize(
    ("kind", "params", "error", "match"),
    [
        ("nope", {}, InvalidRequest, "unknown job kind 'nope'; known: train, score"),
        ("flags", {}, InvalidRequest, "needs parameter.*models"),
        ("flags", {"models": "champion"}, NotFound, "reference 'champion'"),
        ("study", {"model": "7", "split": "main"}, NotFound, "unknown model reference '7'"),
        ("study", {"split": "main"}, InvalidRequest, "needs parameter.*model"),
        ("selftest", {"colour": "red"}, InvalidRequest, "unknown parameter.*colour"),
        ("selftest", {"seconds": "soon"}, InvalidRequest, "seconds='soon' is not a number"),
        ("selftest", {"mode": "explode"}, InvalidRequest, "unknown mode 'explode'"),
        ("train", {}, InvalidRequest, "needs parameter.*split"),
        ("train", {"split": "nosuch"}, NotFound, "unknown split 'nosuch'"),
        ("train", {"split": "main", "profile": "huge"}, InvalidRequest, "unknown profile"),
        ("score", {"model": "champion", "cores": "Q0000-0"}, NotFound, "reference 'champion'"),
        ("evaluate", {"model": "7", "split": "main"}, NotFound, "unknown model reference '7'"),
    ],
)
def test_bad_submissions_are_refused_before_anything_is_enqueued(
    db_url: str, kind: str, params: dict[str, Any], error: type[Exception], match: str
) -> None:
    seed_users()
    insert_labelled_cores(6)
    with session_scope() as s:
        from her2ops.platform.splits import create_split

        create_split(s, actor="lm", name="main", seed=1, ratios={"train": 0.5, "val": 0.25,
                                                                   "test": 0.25})  # fmt: skip
    with pytest.raises(error, match=match):
        use.submit_job(actor="eng", kind=kind, params=params)
    assert _count() == 0
    assert queued_messages("cpu") == 0 and queued_messages("gpu") == 0


def test_permission_is_checked_at_submit(db_url: str) -> None:
    seed_users()
    with pytest.raises(PermissionDenied, match="p1"):
        use.submit_job(actor="p1", kind="train", params={"split": "main"})
    assert _count() == 0


def test_twenty_concurrent_duplicate_submissions_make_one_job(db_url: str) -> None:
    seed_users()
    barrier = threading.Barrier(20)
    views: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            views.append(use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(views) == 20 and len({v["id"] for v in views}) == 1
    assert sum(v["created"] for v in views) == 1
    assert _count() == 1
    assert queued_messages("cpu") == 1  # only the submitter that created the row sent
    again = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"})
    assert again["id"] == views[0]["id"] and not again["created"]
    other = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"}, key="mine")
    assert other["id"] != views[0]["id"] and other["created"]


def _add_and_send(s: Any, key: str) -> int:
    job, created = jobs.submit(
        s, kind="selftest", queue="cpu", params={}, actor="eng", max_attempts=3, key=key
    )
    assert created
    send_after_commit(s, job_id=job.id, kind=job.kind, queue=job.queue)
    return job.id


class _Abort(Exception):
    pass


def test_rolled_back_transaction_sends_nothing(db_url: str) -> None:
    seed_users()
    with pytest.raises(_Abort), session_scope() as s:
        _add_and_send(s, "rolled-back")
        raise _Abort()
    assert _count() == 0 and queued_messages("cpu") == 0

    with session_scope() as s:
        job_id = _add_and_send(s, "committed")
        assert queued_messages("cpu") == 0  # not before the commit
    assert queued_messages("cpu") == 1
    with session_scope() as s:
        assert jobs.get_job(s, job_id).dispatched_at is not None


def test_released_savepoint_sends_nothing_until_the_outer_commit(db_url: str) -> None:
    # (on SQLite, platform/db.py opens the outer transaction before the SAVEPOINT: pysqlite
    # would not, and RELEASE would then commit for real)
    seed_users()
    with pytest.raises(_Abort), session_scope() as s:
        with s.begin_nested():  # released: SQLAlchemy fires after_commit for it
            _add_and_send(s, "rolled-back")
        assert queued_messages("cpu") == 0
        raise _Abort()
    assert _count() == 0 and queued_messages("cpu") == 0

    with session_scope() as s:
        with s.begin_nested():
            _add_and_send(s, "committed")
        assert queued_messages("cpu") == 0  # still inside the outer transaction
    assert queued_messages("cpu") == 1


def test_claim_lease_and_fencing(db_url: str) -> None:
    seed_users()
    job_id = use.submit_job(actor="eng", kind="selftest", params={})["id"]
    with session_scope() as s:
        first = jobs.claim(s, job_id=job_id, worker="w1", lease_seconds=60)
    assert first is not None and first.token == 1 and first.attempt == 1 and first.actor == "eng"
    with session_scope() as s:  # claimed: nobody else gets it
        assert jobs.claim(s, job_id=job_id, worker="w2", lease_seconds=60) is None
    with session_scope() as s:
        assert not jobs.renew(s, job_id=job_id, token=1, lease_seconds=60, progress=(1, 4, "x"))

    _expire_now(job_id)  # w1 stalls past its lease
    with session_scope() as s:
        assert jobs.expire_leases(s) == {"queued": [job_id]}
    with session_scope() as s:
        second = jobs.claim(s, job_id=job_id, worker="w2", lease_seconds=60)
    assert second is not None and second.token == 2 and second.attempt == 2

    for write in (
        lambda s: jobs.finish(s, job_id=job_id, token=1, result={"by": "w1"}),
        lambda s: jobs.renew(s, job_id=job_id, token=1, lease_seconds=60),
        lambda s: jobs.fail(s, job_id=job_id, token=1, error="x", detail=None, retryable=True),
        lambda s: jobs.mark_cancelled(s, job_id=job_id, token=1),
    ):
        with pytest.raises(LeaseLost), session_scope() as s:
            write(s)
    with session_scope() as s:
        row = jobs.get_job(s, job_id)
        assert (row.status, row.worker, row.result) == ("running", "w2", None)
        assert (row.progress_done, row.progress_total) == (1, 4)  # w1's earlier progress
    with session_scope() as s:
        jobs.finish(s, job_id=job_id, token=2, result={"by": "w2"})
    with session_scope() as s:
        row = jobs.get_job(s, job_id)
        assert (row.status, row.result) == ("succeeded", {"by": "w2"})


def test_lost_workers_use_up_attempts_then_the_job_fails(db_url: str) -> None:
    seed_users()
    job_id = use.submit_job(actor="eng", kind="selftest", params={}, max_attempts=2)["id"]
    for attempt in (1, 2):
        with session_scope() as s:
            c = jobs.claim(s, job_id=job_id, worker=f"w{attempt}", lease_seconds=60)
        assert c is not None and c.attempt == attempt
        _expire_now(job_id)
        with session_scope() as s:
            changed = jobs.expire_leases(s)
        assert changed == ({"queued": [job_id]} if attempt == 1 else {"failed": [job_id]})
    with session_scope() as s:
        row = jobs.get_job(s, job_id)
        assert row.status == "failed" and row.attempts == 2
        assert "worker was lost" in (row.error or "")
        assert jobs.claim(s, job_id=job_id, worker="w3", lease_seconds=60) is None


def test_cancel_and_retry_rules(db_url: str) -> None:
    seed_users()
    queued = use.submit_job(actor="eng", kind="selftest", params={}, key="a")["id"]
    assert use.cancel_job(actor="eng", job_id=queued)["status"] == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        use.cancel_job(actor="eng", job_id=queued)
    with pytest.raises(Conflict, match="only a failed job can be retried"):
        use.retry_job(actor="eng", job_id=queued)
    with session_scope() as s:
        assert jobs.claim(s, job_id=queued, worker="w", lease_seconds=60) is None

    running = use.submit_job(actor="eng", kind="selftest", params={}, key="b")["id"]
    with session_scope() as s:
        c = jobs.claim(s, job_id=running, worker="w", lease_seconds=60)
    assert c is not None
    view = use.cancel_job(actor="eng", job_id=running)
    assert view["status"] == "running" and view["cancel_requested"]
    with session_scope() as s:  # the worker learns it at its next renewal
        assert jobs.renew(s, job_id=running, token=c.token, lease_seconds=60)

    failing = use.submit_job(actor="eng", kind="selftest", params={"mode": "raise"},
                             max_attempts=1)  # fmt: skip
    assert use.run_job(failing["id"], worker="w") == "failed"
    view = use.show_job(actor="eng", job_id=failing["id"])
    assert view["error"] == "RuntimeError: selftest: raised as asked"
    assert "Traceback" in view["error_detail"]
    retried = use.retry_job(actor="eng", job_id=failing["id"])
    assert (retried["status"], retried["attempts"], retried["error"]) == ("queued", 0, None)
    with pytest.raises(NotFound, match="unknown job 999"):
        use.show_job(actor="eng", job_id=999)


def test_run_job_in_process_writes_progress_and_result(db_url: str) -> None:
    seed_users()
    params = {"mode": "sleep", "seconds": 1.2}
    job_id = use.submit_job(actor="eng", kind="selftest", params=params)["id"]
    assert use.run_job(job_id, worker="here") == "succeeded"
    view = use.show_job(actor="eng", job_id=job_id)
    assert view["status"] == "succeeded" and view["worker"] == "here"
    assert view["result"]["mode"] == "sleep" and view["seconds"] >= 1.2
    assert view["progress"]["message"] == "sleeping" and view["progress"]["done"] is not None
    assert use.run_job(job_id, worker="again") == "skipped"  # a duplicate message does nothing

    raising = use.submit_job(actor="eng", kind="selftest", params={"mode": "raise"})["id"]
    assert use.run_job(raising, worker="w") == "retry"
    view = use.show_job(actor="eng", job_id=raising)
    assert view["status"] == "queued" and view["attempts"] == 1
    assert use.run_job(raising, worker="w") == "retry"
    assert use.run_job(raising, worker="w") == "failed"
    assert use.show_job(actor="eng", job_id=raising)["attempts"] == 3

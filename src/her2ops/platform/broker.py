"""The message side of jobs: the Celery app's configuration and sending after commit.

This module configures Celery and sends messages by task *name*; it holds no task code (that is
``her2ops.workers``), so the application layer can enqueue without importing an adapter.

A message is only a pointer to a ``jobs`` row and is sent only after the transaction that wrote
the row commits: :func:`send_after_commit` queues it on the session and a session hook sends it
when the *outermost* transaction commits. SQLAlchemy fires ``after_commit`` for a released
SAVEPOINT too, so the hook skips those; a rollback of the outer transaction drops the queue.
A send that fails (broker down) leaves ``jobs.dispatched_at`` NULL and the dispatcher sends it
later; a message sent twice is harmless because only one worker can claim the row.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from her2ops.config import Settings, get_settings

log = logging.getLogger("her2ops.jobs")

QUEUES = ("gpu", "cpu")
#: The queue of each job kind: GPU work vs bookkeeping on CPUs.
KIND_QUEUES: dict[str, str] = {
    "train": "gpu",
    "score": "gpu",
    "retrain": "gpu",
    "evaluate": "cpu",
    "study": "cpu",
    "flags": "cpu",
    "ensemble": "cpu",
    "selftest": "cpu",
}
_PENDING = "her2ops.jobs_to_send"


def task_name(kind: str) -> str:
    return f"her2ops.{kind}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the senders and the workers."""
    url = settings.resolved_broker_url
    transport_options: dict[str, Any] = {}
    if url.startswith(("redis://", "rediss://")):
        transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        }
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    elif url.startswith("sqla+"):
        # (its transport options go to create_engine, so none here; it polls once a second)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        # at-least-once delivery; the jobs table makes the effect exactly-once
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # the jobs table is the result: no result backend
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "cpu",
        "task_routes": {task_name(k): {"queue": q} for k, q in KIND_QUEUES.items()},
        # no broadcast/fanout needed (cancellation goes through the jobs table), which also
        # keeps the embedded SQLAlchemy transport (no fanout) usable
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
    }


_APPS: dict[tuple[str, str], Celery] = {}


def celery_app(settings: Settings | None = None) -> Celery:
    """The Celery app for the configured broker (one per broker URL)."""
    settings = settings or get_settings()
    key = (settings.resolved_broker_url, settings.broker_key_prefix)
    if key not in _APPS:
        app = Celery("her2ops", set_as_current=False)
        app.conf.update(celery_config(settings))
        _APPS[key] = app
    return _APPS[key]


def queued_messages(queue: str) -> int:
    """Messages waiting in ``queue`` on the configured broker (tests and diagnostics)."""
    with celery_app().connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue=queue).message_count)


def send(job_id: int, kind: str, queue: str) -> bool:
    """Publish the message of one job; False (and a warning) when the broker cannot take it."""
    app = celery_app()
    try:
        app.send_task(
            task_name(kind),
            args=[job_id],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:
        log.warning(
            '{"event": "job.send_failed", "job": %d, "error": "%s"}',
            job_id,
            type(exc).__name__,
        )
        return False
    return True


def send_after_commit(session: Session, *, job_id: int, kind: str, queue: str) -> None:
    """Send the job's message once the session's outermost transaction commits."""
    session.info.setdefault(_PENDING, []).append((job_id, kind, queue))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a released SAVEPOINT: the outer transaction may still roll back
    pending: list[tuple[int, str, str]] = session.info.pop(_PENDING, [])
    if not pending:
        return
    sent = [jid for jid, kind, queue in pending if send(jid, kind, queue)]
    if sent:
        _mark_dispatched(session, sent)


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)  # rolled back (a commit has sent and popped them)


def _mark_dispatched(session: Session, job_ids: list[int]) -> None:
    """Record the send in a transaction of its own (the committing one is over)."""
    from her2ops.platform.db import session_scope
    from her2ops.platform.jobs import mark_dispatched

    bind = session.get_bind()
    url = bind.engine.url.render_as_string(hide_password=False)
    try:
        with session_scope(url) as s:
            mark_dispatched(s, job_ids=job_ids)
    except Exception as exc:  # the dispatcher re-sends later; a duplicate is harmless
        log.warning('{"event": "job.mark_dispatched_failed", "error": "%s"}', type(exc).__name__)

"""Celery tasks: a job id in, one use case run by ``pipelines.jobs.run_job``, nothing out.

One named task per job kind (``her2ops.train``, ``her2ops.score``, ...), routed to its queue.
The task holds no logic: claiming, progress, the fencing token, retries and the result all live
in the jobs table through ``run_job``. A message whose job is not claimable is acknowledged and
dropped (the table decides what runs), so at-least-once delivery has an exactly-once effect.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery

from her2ops.pipelines.jobs import run_job
from her2ops.platform.broker import KIND_QUEUES, task_name


def _worker_name(task: Any) -> str:
    host = task.request.hostname or socket.gethostname()
    return f"{host}:{os.getpid()}"


def _register(app: Celery, kind: str) -> Any:
    @app.task(
        name=task_name(kind),
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def job_task(self: Any, job_id: int) -> str:
        return run_job(int(job_id), worker=_worker_name(self), kind=kind)

    return job_task


def register_tasks(app: Celery) -> dict[str, Any]:
    """Register one task per job kind on ``app`` (idempotent)."""
    return {kind: _register(app, kind) for kind in KIND_QUEUES}

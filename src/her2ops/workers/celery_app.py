"""The Celery application of the workers: broker configuration, queues, fork safety.

Configuration lives in ``her2ops.platform.broker`` (senders and workers share it): acks late,
reject on worker lost, prefetch 1, queues ``gpu`` and ``cpu``, no result backend. Importing
this module builds the app for the configured broker and registers the tasks on it.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from her2ops.platform.broker import celery_app
from her2ops.platform.db import reset_engines
from her2ops.workers.tasks import register_tasks

app = celery_app()
TASKS = register_tasks(app)


@worker_process_init.connect
def _dispose_inherited_engines(**_: Any) -> None:
    """A forked pool process must not reuse the parent's database connections."""
    reset_engines()


__all__ = ["TASKS", "app"]

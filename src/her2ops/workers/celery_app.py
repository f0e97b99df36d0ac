"""The Celery application of the workers: broker configuration, queues, fork safety.

Configuration lives in ``her2ops.platform.broker`` (senders and workers share it): acks late,
reject on worker lost, prefetch 1, queues ``gpu`` and ``cpu``, no result backend. Importing
this module builds the app for the configured broker and registers the tasks on it.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from celery.signals import worker_process_init

from her2ops.platform.broker import celery_app
from her2ops.platform.db import reset_engines
from her2ops.workers.tasks import register_tasks

app = celery_app()
TASKS = register_tasks(app)


@worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """Prepare a forked pool process for jobs.

    It must not reuse the parent's database connections. And it is started as a *daemonic*
    process, which multiprocessing forbids to have children, but a score job samples PSSs in
    DataLoader worker processes: clear the flag. Those workers are daemonic themselves and
    exit with their parent (torch's watchdog), so nothing outlives a killed pool process.
    """
    reset_engines()
    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]


__all__ = ["TASKS", "app"]

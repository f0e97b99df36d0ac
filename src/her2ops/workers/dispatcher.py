"""The dispatcher: a loop over ``pipelines.jobs.dispatch_once``.

It expires the leases of lost workers (re-queueing or failing their jobs) and sends the
messages of queued rows that have none (broker down at submit time, a message lost with a
broker restart). Several dispatchers may run at once: every row change is one conditional
UPDATE. ``her2ops worker`` starts one beside itself unless told not to.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from her2ops.config import get_settings
from her2ops.pipelines.jobs import dispatch_once

log = logging.getLogger("her2ops.jobs")


def run_dispatcher(
    *, interval: float | None = None, exit_with: int | None = None, once: bool = False
) -> None:
    """Run rounds until SIGTERM/SIGINT (or until process ``exit_with`` is gone)."""
    interval = interval or get_settings().dispatcher_interval_seconds
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    while not stop.is_set():
        try:
            dispatch_once()
        except Exception as exc:  # a database or broker blip: next round
            log.warning('{"event": "dispatcher.error", "error": "%s"}', type(exc).__name__)
        if once:
            return
        if exit_with is not None and not _alive(exit_with):
            return
        stop.wait(interval)


def _alive(pid: int) -> bool:
    if os.getppid() != pid:
        return False  # re-parented: the worker that started us is gone
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True

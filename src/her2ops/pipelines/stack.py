"""The deployed stack as local processes, for machines without Docker and for end-to-end tests.

What ``docker-compose.yml`` runs as containers runs here as child processes of one command:
``mlflow server`` (backend store and artefact folder given), a GPU-queue and a CPU-queue
``her2ops worker``, the ``her2ops dispatcher`` and the ``her2ops dashboard``, all on the settings
of this process (PostgreSQL, Redis, ... from ``HER2OPS_*``) with ``HER2OPS_MLFLOW_TRACKING_URI``
pointed at the server it started. :meth:`LocalStack.wait_healthy` waits until each is healthy
(HTTP health endpoints for MLflow and the dashboard, Celery's "ready" line for workers, a live
process for the dispatcher); :meth:`LocalStack.stop` sends SIGTERM to each process group, then
SIGKILL after a grace period. Logs go to one file per service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from her2ops.errors import ConfigError, InvalidRequest
from her2ops.pipelines.runtime import get_runtime


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str | None = None  # else: the log shows ``ready_text`` (or the process lives)
    ready_text: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    _out: IO[bytes] | None = field(default=None, repr=False)

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        if self.health_url is not None:
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        if self.ready_text is not None and self.log is not None:
            return self.ready_text in self.log.read_text(errors="replace")
        return True


class LocalStack:
    """mlflow server, workers (gpu, cpu), dispatcher and dashboard as child processes."""

    def __init__(
        self,
        *,
        mlflow_backend: str | None = None,
        artifacts: Path | None = None,
        mlflow_port: int = 5000,
        dashboard_port: int = 8501,
        dashboard: bool = True,
        logs: Path | None = None,
    ) -> None:
        rt = get_runtime()
        rt.check_database()  # migrated (SQLite) or at head (PostgreSQL) before anything starts
        s = rt.settings
        if mlflow_backend is None:
            if s.resolved_mlflow_uri.startswith(("http://", "https://")):
                raise InvalidRequest(
                    "HER2OPS_MLFLOW_TRACKING_URI names a server already; give --mlflow-backend "
                    "(its backend store) to start one here"
                )
            mlflow_backend = s.resolved_mlflow_uri
        self.logs = logs or s.data_dir / "logs" / "stack"
        self.logs.mkdir(parents=True, exist_ok=True)
        artifacts = artifacts or s.mlflow_artifact_root
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}" if dashboard else None
        me = [sys.executable, "-m", "her2ops"]
        self.env = {
            **os.environ,
            "HER2OPS_MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        worker = [*me, "worker", "--concurrency", "1", "--no-dispatcher"]
        self.services = [
            Service(
                "mlflow",
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    mlflow_backend,
                    "--artifacts-destination",
                    str(artifacts),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                ],
                health_url=self.mlflow_url + "/health",
            ),
            Service(
                "worker-gpu",
                [*worker, "--queues", "gpu", "--name", "gpu@%h"],
                ready_text=" ready.",
            ),
            Service(
                "worker-cpu",
                [*worker, "--queues", "cpu", "--name", "cpu@%h"],
                ready_text=" ready.",
            ),
            Service("dispatcher", [*me, "dispatcher"]),
        ]
        if dashboard:
            self.services.append(
                Service(
                    "dashboard",
                    [*me, "dashboard", "--port", str(dashboard_port), "--host", "127.0.0.1"],
                    health_url=f"{self.dashboard_url}/_stcore/health",
                )
            )

    def start(self) -> None:
        for svc in self.services:
            svc.log = self.logs / f"{svc.name}.log"
            svc._out = svc.log.open("wb")
            svc.proc = subprocess.Popen(
                svc.argv,
                stdout=svc._out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def wait_healthy(self, timeout: float = 180.0) -> dict[str, bool]:
        """Wait until every service is healthy; ConfigError naming the ones that are not."""
        deadline = time.monotonic() + timeout
        while True:
            state = {svc.name: svc.healthy() for svc in self.services}
            if all(state.values()):
                return state
            dead = [
                s.name for s in self.services if s.proc is not None and s.proc.poll() is not None
            ]
            if dead or time.monotonic() > deadline:
                bad = dead or [name for name, ok in state.items() if not ok]
                raise ConfigError(
                    f"stack: {', '.join(bad)} did not become healthy "
                    f"({'exited' if dead else f'after {timeout:g} s'}); logs in {self.logs}"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` s; exit codes."""
        for svc in reversed(self.services):
            if svc.proc is not None and svc.proc.poll() is None:
                _signal(svc.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes: dict[str, int | None] = {}
        for svc in reversed(self.services):
            if svc.proc is None:
                continue
            try:
                svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(svc.proc, signal.SIGKILL)
                svc.proc.wait(timeout=10)
            codes[svc.name] = svc.proc.returncode
            if svc._out is not None:
                svc._out.close()
        return codes

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)

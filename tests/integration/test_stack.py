"""`her2ops stack up`'s processes on real services: PostgreSQL, Redis, mlflow server, two Celery
workers, the dispatcher and the Streamlit dashboard; a job runs through them; all stop cleanly."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest

from her2ops.config import get_settings
from her2ops.platform import migrate
from tests.conftest import pg_database
from tests.factories import free_port

pytestmark = pytest.mark.slow


def test_local_stack_runs_a_job_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379).ping()
    except redis.ConnectionError:
        pytest.skip("Redis unreachable at 127.0.0.1:6379")
    with pg_database("her2ops_stack") as url:
        monkeypatch.setenv("HER2OPS_DATABASE_URL", url)
        monkeypatch.setenv("HER2OPS_BROKER_URL", "redis://127.0.0.1:6379/0")
        monkeypatch.setenv("HER2OPS_BROKER_KEY_PREFIX", f"stack-{uuid.uuid4().hex[:8]}:")
        monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "1")
        monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")
        get_settings.cache_clear()
        migrate.upgrade(url)
        from her2ops.pipelines import curation
        from her2ops.pipelines.jobs import submit_job, wait_job
        from her2ops.pipelines.stack import LocalStack

        curation.add_user(actor=None, username="admin", role="admin", password="stack-admin-1")
        stack = LocalStack(
            mlflow_backend=f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifacts=tmp_path / "artifacts",
            mlflow_port=free_port(),
            dashboard_port=free_port(),
            logs=tmp_path / "logs",
        )
        stack.start()
        try:
            state = stack.wait_healthy(timeout=240)
            assert set(state) == {"mlflow", "worker-gpu", "worker-cpu", "dispatcher", "dashboard"}
            for base in (stack.mlflow_url + "/health", f"{stack.dashboard_url}/_stcore/health"):
                with urllib.request.urlopen(base, timeout=5) as r:
                    assert r.status == 200
            job = submit_job(actor="admin", kind="selftest", params={"mode": "ok"})
            done = wait_job(actor="admin", job_id=job["id"], timeout=120)
            assert done["status"] == "succeeded", done
            assert str(done["worker"]).startswith("cpu@")  # selftest goes to the cpu queue
        finally:
            codes = stack.stop()
        assert set(codes) == set(state) and all(c is not None for c in codes.values())
        assert all(s.proc is not None and s.proc.poll() is not None for s in stack.services)

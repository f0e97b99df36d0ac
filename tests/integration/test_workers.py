"""Real workers (``her2ops worker`` subprocesses) on real brokers, with faults.

Brokers: the shared Redis at 127.0.0.1:6379 (keys under a prefix of this test's own), a private
``redis-server`` for the broker-outage tests, and the embedded default (kombu's SQLAlchemy
transport on a SQLite file). Database: PostgreSQL (and SQLite for the embedded default).
Leases are 2 s and the dispatcher runs every 0.5 s so that faults resolve in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import her2ops
from her2ops.config import get_settings
from her2ops.pipelines import jobs as use
from her2ops.platform.db import session_scope
from tests.factories import free_port, seed_users

SRC = Path(her2ops.__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379/0"
PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

pytestmark = pytest.mark.slow


class Worker:
    """A ``her2ops worker`` process group; its output goes to ``log``."""

    def __init__(self, log: Path, *, name: str, dispatcher: bool = True, concurrency: int = 1):
        self.log = log
        self.name = name
        args = [sys.executable, "-m", "her2ops", "worker", "--queues", "gpu,cpu",
                "--concurrency", str(concurrency), "--name", f"{name}@%h"]  # fmt: skip
        if not dispatcher:
            args.append("--no-dispatcher")
        env = dict(os.environ, PYTHONPATH=str(SRC))
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(name: str = "w1", **kwargs: Any) -> Worker:
        w = Worker(tmp_path / f"{name}-{len(started)}.log", name=name, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(autouse=True)
def _fast_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "1")
    monkeypatch.setenv("HER2OPS_JOB_LEASE_SECONDS", "2")
    monkeypatch.setenv("HER2OPS_DISPATCHER_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("HER2OPS_JOB_REDISPATCH_SECONDS", "3")
    get_settings.cache_clear()


def _redis_or_skip(url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but Redis is unreachable at {url}: {exc}")
        pytest.skip(f"Redis unreachable at {url}: {exc}")


def _use_shared_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this test at the shared Redis, under a key prefix of its own."""
    _redis_or_skip(REDIS)
    monkeypatch.setenv("HER2OPS_BROKER_URL", REDIS)
    monkeypatch.setenv("HER2OPS_BROKER_KEY_PREFIX", f"her2ops-test-{uuid.uuid4().hex[:10]}:")
    get_settings.cache_clear()


@pytest.fixture(params=["redis", "embedded"])
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The shared Redis (keys under a prefix of this test's own) or the embedded default."""
    if request.param == "embedded":
        yield "embedded"
        return
    _redis_or_skip(REDIS)
    prefix = f"her2ops-test-{uuid.uuid4().hex[:10]}:"
    monkeypatch.setenv("HER2OPS_BROKER_URL", REDIS)
    monkeypatch.setenv("HER2OPS_BROKER_KEY_PREFIX", prefix)
    get_settings.cache_clear()
    yield "redis"
    import redis

    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def wait_for(
    job_id: int, done: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = use.show_job(actor="eng", job_id=job_id)
        if done(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there in {timeout} s: {view}")
        time.sleep(0.2)


def ended(view: dict[str, Any]) -> bool:
    return view["status"] in ("succeeded", "failed", "cancelled")


def running(view: dict[str, Any]) -> bool:
    return view["status"] == "running"


@PG
def test_raise_and_kill_every_time_end_failed_after_max_attempts(
    db_url: str, broker: str, workers: Callable[..., Worker]
) -> None:
    seed_users()
    w = workers("w1")
    raising = use.submit_job(actor="eng", kind="selftest", params={"mode": "raise"})["id"]
    killing = use.submit_job(actor="eng", kind="selftest", params={"mode": "kill"}, max_attempts=2)[
        "id"
    ]
    fine = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"})["id"]

    view = wait_for(raising, ended)
    assert (view["status"], view["attempts"]) == ("failed", 3)
    assert view["error"] == "RuntimeError: selftest: raised as asked"
    assert "Traceback" in view["error_detail"]

    view = wait_for(killing, ended)
    assert (view["status"], view["attempts"]) == ("failed", 2)
    assert "worker was lost" in view["error"]

    view = wait_for(fine, ended)
    assert view["status"] == "succeeded" and view["worker"].startswith("w1@")
    assert view["result"]["mode"] == "ok"
    log = w.text()
    assert f'"event": "job.start", "job": {fine}' in log
    assert f'"event": "job.finish", "job": {fine}' in log
    assert log.count(f'"event": "job.start", "job": {killing},') == 2  # not one more


@pytest.mark.parametrize(
    ("db_url", "broker"), [("postgresql", "redis"), ("sqlite", "embedded")], indirect=True
)
def test_cancel_a_running_and_a_queued_job(
    db_url: str, broker: str, workers: Callable[..., Worker]
) -> None:
    seed_users()
    workers("w1")  # one job at a time: the second waits in the broker
    long = use.submit_job(actor="eng", kind="selftest", params={"mode": "sleep", "seconds": 60})
    view = wait_for(long["id"], lambda v: running(v) and v["progress"]["done"] is not None)
    assert view["progress"]["message"] == "sleeping"
    queued = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"})["id"]

    cli = subprocess.run(
        [sys.executable, "-m", "her2ops", "--as", "eng", "jobs", "cancel", str(queued)],
        # (credentials are tested with the CLI's login; here only the cancel path matters)
        env=dict(os.environ, PYTHONPATH=str(SRC), HER2OPS_REQUIRE_CREDENTIALS="false"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert use.show_job(actor="eng", job_id=queued)["status"] == "cancelled"

    t0 = time.monotonic()
    assert use.cancel_job(actor="eng", job_id=long["id"])["cancel_requested"]
    view = wait_for(long["id"], ended, timeout=30)
    assert view["status"] == "cancelled" and time.monotonic() - t0 < 15
    # the worker then takes the cancelled job's message and drops it: it never starts
    after = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"}, key="after")
    assert wait_for(after["id"], ended)["status"] == "succeeded"
    assert use.show_job(actor="eng", job_id=queued)["attempts"] == 0


@PG
def test_stalled_worker_loses_its_lease_and_cannot_write(
    db_url: str, workers: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_shared_redis(monkeypatch)
    get_settings.cache_clear()
    seed_users()
    stalled = workers("stalled", dispatcher=False)
    job_id = use.submit_job(actor="eng", kind="selftest", params={"mode": "sleep", "seconds": 6})[
        "id"
    ]
    view = wait_for(job_id, lambda v: running(v) and v["progress"]["done"] is not None)
    assert view["worker"].startswith("stalled@") and view["attempts"] == 1
    stalled.signal(signal.SIGSTOP)  # the whole worker freezes, its lease thread too

    workers("rescuer")  # with a dispatcher: expires the lease and re-sends the job
    view = wait_for(job_id, ended)
    assert view["status"] == "succeeded" and view["attempts"] == 2
    assert view["worker"].startswith("rescuer@")
    done_by = view["result"]["pid"]

    stalled.signal(signal.SIGCONT)  # wakes up, finishes its sleep, tries to write
    deadline = time.monotonic() + 60
    while '"status": "lease_lost"' not in stalled.text():
        assert time.monotonic() < deadline, stalled.text()[-3000:]
        time.sleep(0.3)
    view = use.show_job(actor="eng", job_id=job_id)
    assert view["status"] == "succeeded" and view["result"]["pid"] == done_by
    assert view["worker"].startswith("rescuer@")


def _redis_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
            return proc
        except Exception:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=20)


@PG
def test_broker_down_at_submit_and_broker_restarted_with_a_job_queued(
    db_url: str, tmp_path: Path, workers: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("HER2OPS_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    get_settings.cache_clear()
    seed_users()

    # 1. nothing listens on the port: the submit succeeds, the row waits in the outbox
    t0 = time.monotonic()
    first = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"}, key="first")
    assert time.monotonic() - t0 < 15
    assert first["status"] == "queued" and first["dispatched_at"] is None

    server = _redis_server(port, tmp_path)
    try:
        w = workers("w1")
        assert wait_for(first["id"], ended)["status"] == "succeeded"
        w.stop()

        # 2. a message waits in Redis with no worker; Redis restarts without persistence
        second = use.submit_job(actor="eng", kind="selftest", params={"mode": "ok"}, key="2nd")
        assert second["dispatched_at"] is not None
        import redis

        assert redis.Redis(port=port).llen("cpu") == 1
        _stop(server)
        server = _redis_server(port, tmp_path)
        assert redis.Redis(port=port).llen("cpu") == 0  # the message is gone
        workers("w2")
        view = wait_for(second["id"], ended)
        assert view["status"] == "succeeded" and view["attempts"] == 1
    finally:
        _stop(server)


@PG
def test_sigkill_mid_score_job_then_a_new_worker_finishes_it_once(
    db_url: str, synthetic: Path, workers: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from her2ops.pipelines.train import train_model
    from her2ops.platform.schema import Core, Prediction, ReviewItem
    from her2ops.platform.splits import patient_partitions
    from tests.factories import curate_synthetic

    _use_shared_redis(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # torch on a busy 2-core machine can starve the lease thread for seconds: a 2 s lease
    # would (correctly) be taken over from a live worker; this test is about a dead one
    monkeypatch.setenv("HER2OPS_JOB_LEASE_SECONDS", "10")
    get_settings.cache_clear()
    torch.set_num_threads(1)
    curate_synthetic(synthetic)
    train_model(actor="eng", split="main", profile_name="test", epochs=1)
    with session_scope() as s:
        parts = patient_partitions(s, "main")
        targets = {
            code for code, pid in s.execute(select(Core.code, Core.patient_id)) if parts.get(pid)
        }

    first = workers("first")
    job = use.submit_job(
        actor="eng",
        kind="score",
        params={"model": "challenger", "cores": ",".join(sorted(targets)), "n_sets": "20"},
    )
    assert job["params"]["model"] == "1"  # the alias is resolved at submit time

    def predictions() -> int:
        with session_scope() as s:
            return int(s.scalar(select(func.count()).select_from(Prediction)) or 0)

    started = wait_for(job["id"], running)["started_at"]
    assert started is not None
    deadline = time.monotonic() + 8  # let it get into the cores (or the model load) first
    while time.monotonic() < deadline and predictions() == 0:
        time.sleep(0.2)
    first.signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    view = use.show_job(actor="eng", job_id=job["id"])
    assert view["status"] == "running", "the job ended before the kill: make it longer"
    at_kill = predictions()  # committed core by core before the kill
    assert at_kill < len(targets)

    workers("second")
    view = wait_for(job["id"], ended, timeout=240)
    assert view["status"] == "succeeded" and view["attempts"] == 2, view["error_detail"]
    assert view["worker"].startswith("second@")
    with session_scope() as s:
        rows = s.execute(select(Core.code, func.count()).join(Prediction).group_by(Core.code)).all()
    assert {code for code, _ in rows} == targets
    assert all(n == 1 for _, n in rows)  # exactly one prediction per core
    # the second attempt skipped what the first committed and scored the rest
    assert view["result"]["already_scored"] == at_kill
    assert view["result"]["scored"] == len(targets) - at_kill

    # the loop's next steps as jobs on the cpu queue: flag the scored cores for review, and the
    # N/k study of the same model (small M and draws: this is about the job, not the figures)
    flags = use.submit_job(actor="eng", kind="flags", params={"models": "challenger", "top": "3"})
    assert flags["params"]["models"] == ["1"]
    study = use.submit_job(
        actor="eng",
        kind="study",
        params={
            "model": "challenger",
            "split": "main",
            "study_sets": "20",
            "study_draws": "50",
            "n_sets": "4",
            "top_k": "2",
        },
    )
    flags = wait_for(flags["id"], ended, timeout=120)
    assert flags["status"] == "succeeded", flags["error_detail"]
    assert flags["result"]["flagged"] > 0 and 0 < flags["result"]["added"] <= 3
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ReviewItem)) == flags["result"]["added"]
    study = wait_for(study["id"], ended, timeout=240)
    assert study["status"] == "succeeded", study["error_detail"]
    assert study["result"]["study"], study["result"]


@PG
def test_in_process_worker_on_redis(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """celery.contrib.testing's worker thread on the real broker (no eager mode)."""
    _use_shared_redis(monkeypatch)
    from celery.contrib.testing.worker import start_worker

    from her2ops.platform.broker import celery_app
    from her2ops.workers.tasks import register_tasks

    app = celery_app()  # the app of this test's settings
    register_tasks(app)

    seed_users()
    job = use.submit_job(actor="eng", kind="selftest", params={"mode": "sleep", "seconds": 0.3})
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        view = wait_for(job["id"], ended, timeout=60)
    assert view["status"] == "succeeded" and view["attempts"] == 1
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] > 2  # > the 2 s lease here

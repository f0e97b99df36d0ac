"""The active-learning loop end to end on real services, as `her2ops stack up` runs them:
PostgreSQL (her2ops and MLflow's backend), a private redis-server (restarted once), `mlflow
server`, a gpu-queue and a cpu-queue Celery worker, the dispatcher and the Streamlit dashboard.

synthetic cores -> ingest -> votes -> consensus -> split -> train job (test profile) ->
registered challenger -> promote -> score job (its worker is SIGKILLed mid-job and replaced) ->
review queue -> pathologists claim and score flagged cores -> consensus changed -> retrain policy
-> retrain job -> new challenger evaluated beside the champion. Asserts the database, MLflow and
the jobs table at each step; nothing is lost or doubled.

One pathologist claims and scores the flagged cores in Debian's chromium on the stack's
dashboard (the Review page); the other two reviewers of each core use the review use cases.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from her2ops.config import get_settings
from her2ops.platform import migrate
from tests.conftest import pg_database
from tests.factories import free_port

pytestmark = pytest.mark.slow


def _redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    proc = subprocess.Popen(
        [*argv, "--appendonly", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.5).ping()
            return proc
        except Exception:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


def _review_in_browser(base: str | None, user: str, choose: Any) -> int:
    """Log in as ``user``, claim and score every item the queue gives them; how many."""
    import re

    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.test_dashboard_browser import CHROMIUM, VIEWPORT, log_in, wait_for_app_run

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    assert base is not None
    scored = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(60_000)
            log_in(page, base, user, f"e2e-{user}-pass")
            expect(page.get_by_role("heading", name="Review")).to_be_visible()
            while True:
                claim = page.get_by_role("button", name="Next core")
                if claim.count():  # after a vote the next item loads by itself
                    claim.click()
                    wait_for_app_run(page)
                header = page.get_by_text(re.compile(r"^core \S+ · item"))
                if header.count() == 0:
                    break  # nothing left for this user
                code = header.first.inner_text().split()[1]
                score = choose(code)
                page.get_by_role(
                    "button", name=re.compile(rf"^{re.escape(score)} Shortcut")
                ).click()
                wait_for_app_run(page)
                scored += 1
        finally:
            browser.close()
    return scored


def _wait(job_id: int, actor: str, timeout: float = 600) -> dict:  # type: ignore[type-arg]
    from her2ops.pipelines.jobs import wait_job

    view = wait_job(actor=actor, job_id=job_id, timeout=timeout)
    assert view["status"] == "succeeded", view
    return view


def test_active_learning_loop_on_real_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    port = free_port()
    redis_proc = _redis(port, redis_dir)
    with pg_database("her2ops_e2e") as url, pg_database("her2ops_e2e_mlflow") as mlflow_db:
        env = {
            "HER2OPS_DATA_DIR": str(tmp_path / "data"),
            "HER2OPS_DATABASE_URL": url,
            "HER2OPS_BROKER_URL": f"redis://127.0.0.1:{port}/0",
            "HER2OPS_BROKER_KEY_PREFIX": f"e2e-{uuid.uuid4().hex[:6]}:",
            "HER2OPS_REQUIRE_CREDENTIALS": "false",
            "HER2OPS_JOB_LEASE_SECONDS": "8",
            "HER2OPS_JOB_REDISPATCH_SECONDS": "3",
            "HER2OPS_DISPATCHER_INTERVAL_SECONDS": "1",
            "HER2OPS_RETRAIN_MIN_CHANGED_LABELS": "1",
            "HER2OPS_DEVICE": "cpu",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        migrate.upgrade(url)
        from her2ops.pipelines import curation, review, splits
        from her2ops.pipelines.jobs import show_job, submit_job
        from her2ops.pipelines.models import promote_model
        from her2ops.pipelines.retrain import check_retrain
        from her2ops.pipelines.stack import LocalStack, Service
        from her2ops.platform.db import session_scope
        from her2ops.platform.schema import ConsensusLabel, Core, ModelVersion, Prediction, Vote
        from her2ops.synthetic.dataset import generate_dataset

        stack = LocalStack(
            mlflow_backend=mlflow_db,
            artifacts=tmp_path / "artifacts",
            mlflow_port=free_port(),
            dashboard_port=free_port(),
            logs=tmp_path / "logs",
        )
        stack.start()
        try:
            stack.wait_healthy(timeout=300)
            monkeypatch.setenv("HER2OPS_MLFLOW_TRACKING_URI", stack.mlflow_url)
            get_settings.cache_clear()

            # curation
            syn = tmp_path / "syn"
            generate_dataset(syn, patients=24, cores=48, size=128, seed=3)
            curation.add_user(actor=None, username="admin", role="admin", password="e2e-admin-1")
            for name, role in [("lab", "lab_manager"), ("eng", "engineer")] + [
                (f"path{i}", "pathologist") for i in range(1, 6)
            ]:
                curation.add_user(
                    actor="admin", username=name, role=role, password=f"e2e-{name}-pass"
                )
            curation.ingest(actor="lab", manifest=syn / "manifest.csv")
            curation.import_votes(actor="lab", path=syn / "votes.csv")
            curation.run_consensus(actor="lab")
            splits.create_split(actor="lab", name="main", seed=1, ratios="0.6,0.2,0.2")

            # train as a job on the gpu-queue worker -> registered challenger in MLflow
            job = submit_job(
                actor="eng", kind="train", params={"split": "main", "profile": "test", "epochs": 2}
            )
            trained = _wait(job["id"], "eng")
            assert str(trained["worker"]).startswith("gpu@")
            version = trained["result"]["version"]
            from her2ops.pipelines.runtime import get_runtime

            tracking = get_runtime().tracking
            assert tracking.alias_version("challenger") == version
            promote_model(actor="eng", ref="challenger")
            assert tracking.alias_version("champion") == version

            # Redis restarted once (append-only file): the workers reconnect
            redis_proc.terminate()
            redis_proc.wait(timeout=20)
            redis_proc = _redis(port, redis_dir)

            # score every core as a job; SIGKILL its worker mid-job, start a new one
            job = submit_job(
                actor="eng",
                kind="score",
                params={"model": "champion", "split": "main", "partition": "train"}
                # 200 sets a core: ~0.3 s a core here, so the job runs for seconds after the
                # first progress write (40 sets finished it before the kill on a loaded machine)
                | {"n_sets": 200, "top_k": 5, "loader_workers": 0},
            )
            deadline = time.monotonic() + 300
            while (show_job(actor="eng", job_id=job["id"])["progress"]["done"] or 0) < 2:
                assert time.monotonic() < deadline, show_job(actor="eng", job_id=job["id"])
                time.sleep(0.1)
            gpu = next(s for s in stack.services if s.name == "worker-gpu")
            assert gpu.proc is not None
            # freeze the worker first, so the kill is known to land mid-job: some cores saved,
            # not all (progress is written at most once a second, so it lags the saves)
            os.killpg(gpu.proc.pid, signal.SIGSTOP)
            with session_scope() as s:
                saved = s.scalar(select(func.count()).select_from(Prediction))
            frozen = show_job(actor="eng", job_id=job["id"])
            assert frozen["status"] == "running", frozen
            assert 2 <= saved < frozen["progress"]["total"], (saved, frozen)
            os.killpg(gpu.proc.pid, signal.SIGKILL)
            gpu.proc.wait(timeout=20)
            replacement = Service("worker-gpu-2", gpu.argv, ready_text=" ready.")
            stack.services.append(replacement)
            replacement.log = stack.logs / "worker-gpu-2.log"
            replacement._out = replacement.log.open("wb")
            replacement.proc = subprocess.Popen(
                replacement.argv,
                stdout=replacement._out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=stack.env,
            )
            scored = _wait(job["id"], "eng")
            assert scored["attempts"] == 2
            with session_scope() as s:
                n_pred = s.scalar(select(func.count()).select_from(Prediction))
                n_cores = s.scalar(select(func.count(func.distinct(Prediction.core_id))))
            assert n_pred == n_cores > 0  # one prediction per core: nothing lost or doubled

            # the evaluation scores the test partition too (out of sample for label suspects)
            job = submit_job(
                actor="eng", kind="evaluate", params={"model": "champion"} | {"split": "main"}
            )
            _wait(job["id"], "eng")

            # review queue; three pathologists score each flagged core away from its label
            # (a deliberate change: 0 where the label is not 0, else 3+)
            built = review.build_queue(actor="eng", model_ref="champion", top=3, votes_needed=3)
            assert built["added"], built
            with session_scope() as s:
                before = s.scalar(select(func.count()).select_from(Vote))
                versions_before = s.scalar(select(func.count()).select_from(ConsensusLabel))

            def away_from_label(code: str) -> str:
                """A score that changes the core's label: 0, or 3+ where the label is 0."""
                with session_scope() as s:
                    label = s.scalar(
                        select(ConsensusLabel.score)
                        .join(Core, Core.id == ConsensusLabel.core_id)
                        .where(Core.code == code, ConsensusLabel.is_current.is_(True))
                    )
                return "3+" if label == 0 else "0"

            # path1 in the browser: Review page, Next core, a score button, until the queue is
            # empty for them; then two more reviewers of each core through the use cases
            submitted = _review_in_browser(stack.dashboard_url, "path1", away_from_label)
            assert submitted == len(built["cores"])
            for name in ("path2", "path3", "path4", "path5"):
                while (view := review.next_item(actor=name)) is not None:
                    review.submit(
                        actor=name,
                        item=view["item"],
                        score=away_from_label(view["core"]),
                        token=view["claim"]["token"],
                    )
                    submitted += 1
            assert submitted == 3 * len(built["cores"])
            with session_scope() as s:
                assert s.scalar(select(func.count()).select_from(Vote)) == before + submitted
                versions_after = s.scalar(select(func.count()).select_from(ConsensusLabel))
            assert versions_after > versions_before  # consensus recomputed and changed

            # the retrain policy submits a retrain job; the challenger is judged beside the champion
            decision = check_retrain(
                actor="eng", model_ref="champion", submit=True, profile="test", epochs=1
            )
            assert decision["due"] and decision["job"] is not None, decision
            retrained = _wait(decision["job"]["id"], "eng")
            rows = {r["model"] for r in retrained["result"]["test"]}
            assert rows == {f"v{retrained['result']['challenger']}", f"v{version}"}
            assert tracking.alias_version("champion") == version  # nothing promoted
            with session_scope() as s:
                assert s.scalar(select(func.count()).select_from(ModelVersion)) == 2
        finally:
            stack.stop()
            redis_proc.terminate()
            redis_proc.wait(timeout=20)

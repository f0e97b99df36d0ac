"""Training, registration and scoring against a real ``mlflow server`` on loopback whose backend
store is PostgreSQL (artefacts proxied by the server), as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch

from her2ops.config import get_settings
from her2ops.pipelines import train as train_mod
from her2ops.pipelines.runtime import get_runtime
from her2ops.pipelines.score import score_cores
from tests.conftest import pg_database
from tests.factories import curate_synthetic, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    with pg_database("her2ops_mlflow") as backend:
        yield from _serve(backend, tmp_path)


def _serve(backend: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "mlflow server did not start:\n"
                    + (tmp_path / "mlflow-server.log").read_text()[-3000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_train_and_score_through_mlflow_server(
    db_url: str, synthetic: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("HER2OPS_MLFLOW_TRACKING_URI", mlflow_server)
    get_settings.cache_clear()
    curate_synthetic(synthetic)
    out = train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=1)
    get_runtime().tracking.experiment_id()
    assert mlflow.get_tracking_uri() == mlflow_server
    client = mlflow.MlflowClient()
    assert client.get_run(out.run_id).info.status == "FINISHED"
    assert str(client.get_model_version_by_alias("her2-pss", "challenger").version) == "1"
    # scoring downloads the weights through the server's artefact proxy
    rep = score_cores(actor="eng", model_ref="challenger", split="main", partition="test")
    assert rep.scored > 0

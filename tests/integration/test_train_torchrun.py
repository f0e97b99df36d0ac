"""``torchrun --nproc-per-node 2 -m her2ops train``: two gloo ranks, one MLflow run, one version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import func, select

from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.db import session_scope
from her2ops.platform.schema import ModelVersion
from tests.factories import curate_synthetic, free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_torchrun_two_cpu_ranks_register_once(db_url: str, synthetic: Path) -> None:
    curate_synthetic(synthetic)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "her2ops",
        "--as",
        "eng",
        "train",
        "--split",
        "main",
        "--profile",
        "test",
        "--epochs",
        "1",
        "--json",
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode()[-3000:] + (exc.stderr or b"").decode()[-3000:]
        pytest.fail(f"torchrun timed out:\n{out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('"run_id"') == 1  # only rank 0 reports
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 1
    get_runtime().tracking.experiment_id()
    exp = mlflow.get_experiment_by_name("her2ops")
    assert exp is not None
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"

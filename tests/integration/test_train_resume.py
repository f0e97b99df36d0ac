"""``her2ops train`` killed with SIGKILL mid-run, then ``--resume RUN`` finishes and registers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import select

from her2ops.config import get_settings
from her2ops.pipelines import train as train_mod
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.db import session_scope
from her2ops.platform.schema import ModelVersion
from tests.factories import curate_synthetic

pytestmark = pytest.mark.slow
EPOCHS = 6


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_killed_training_resumes_and_registers(db_url: str, synthetic: Path) -> None:
    curate_synthetic(synthetic)
    runs = get_settings().data_dir / "runs"
    cmd = [
        sys.executable,
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
        str(EPOCHS),
        "--json",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("*/last.pt")):  # first epoch checkpoint written
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    run_id = next(runs.glob("*/last.pt")).parent.name
    with session_scope() as s:
        assert s.scalar(select(ModelVersion)) is None  # nothing registered by the killed run

    out = train_mod.train_model(
        actor="eng",
        split="main",
        profile_name="test",
        epochs=EPOCHS,
        resume_run=run_id,
    )
    assert out.run_id == run_id and out.version == 1
    assert out.epochs_run == EPOCHS  # the history covers the epochs before and after the kill
    get_runtime().tracking.experiment_id()
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(EPOCHS))

"""Training, registration and scoring against a real ``mlflow server`` on loopback whose backend
store is PostgreSQL (artefacts proxied by the server), as in production."""

from __future__ import annotations

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
from tests.factories import curate_synthetic, serve_mlflow

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    with pg_database("her2ops_mlflow") as backend, serve_mlflow(backend, tmp_path) as url:
        yield url


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

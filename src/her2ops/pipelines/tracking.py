"""MLflow set-up: one tracking store and registry for the whole platform.

The embedded default is a SQLite store and an artifact folder under the data dir; production
points ``HER2OPS_MLFLOW_TRACKING_URI`` at an ``mlflow server`` (PostgreSQL backend).
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

import her2ops
from her2ops.config import Settings, get_settings

EXPERIMENT = "her2ops"


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store; return the experiment id (created if needed)."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    settings = settings or get_settings()
    uri = settings.resolved_mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return str(exp.experiment_id)
    artifact_location = None
    if not uri.startswith(("http://", "https://")):
        root = settings.mlflow_artifact_root
        root.mkdir(parents=True, exist_ok=True)
        artifact_location = root.as_uri()
    return str(client.create_experiment(EXPERIMENT, artifact_location=artifact_location))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (with ``-dirty``) when run from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{her2ops.__version__}+{sha}" if sha else her2ops.__version__

"""Every MLflow call of the platform: configuration, runs, logging, registry, aliases, artefacts.

One place, below ``pipelines`` and imported by nothing lower than it. The embedded default is a
SQLite store and an artefact folder under the data dir; production points
``HER2OPS_MLFLOW_TRACKING_URI`` at an ``mlflow server`` (PostgreSQL backend). HTTP calls get a
timeout and few retries, so an unreachable server is one clear error, not a hang.

Registration and alias moves are external steps: the caller does them first, then the database
step, and undoes the external step (``delete_version``, ``set_alias`` back) if the database step
fails. Nothing here opens a database transaction.
"""

from __future__ import annotations

import os
import subprocess
import time
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import her2ops
from her2ops.config import Settings
from her2ops.errors import ConfigError, NotFound

EXPERIMENT = "her2ops"
#: A run's registered model: one folder holding the weights-only file (the only copy of the
#: weights in the store) and its ``MLmodel``; registry versions point at this folder.
MODEL_DIR = "weights"
WEIGHTS_FILE = "best.pt"
WEIGHTS_ARTIFACT = f"{MODEL_DIR}/{WEIGHTS_FILE}"


class Tracking:
    """The MLflow tracking store and model registry named by the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.uri = settings.resolved_mlflow_uri
        self.model_name = settings.registered_model_name
        self._experiment_id: str | None = None

    # --- set-up ---------------------------------------------------------------------------

    @cached_property
    def client(self) -> Any:
        """An ``MlflowClient`` on the configured store (made only after configuring, so a
        bare client never creates a stray ./mlflow.db)."""
        import mlflow

        self._configure_mlflow()
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _configure_mlflow(self) -> None:
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def experiment_id(self) -> str:
        """The platform's experiment (created on first use)."""
        if self._experiment_id is not None:
            return self._experiment_id
        try:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
        except Exception as exc:  # the MLflow client raises many types for "unreachable"
            raise ConfigError(
                f"cannot reach MLflow at HER2OPS_MLFLOW_TRACKING_URI={self.uri}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if exp is not None:
            self._experiment_id = str(exp.experiment_id)
            return self._experiment_id
        artifact_location = None
        if not self.uri.startswith(("http://", "https://")):
            root = self.settings.mlflow_artifact_root
            root.mkdir(parents=True, exist_ok=True)
            artifact_location = root.as_uri()
        self._experiment_id = str(
            self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        )
        return self._experiment_id

    # --- runs -----------------------------------------------------------------------------

    def create_run(self, run_name: str) -> str:
        return str(self.client.create_run(self.experiment_id(), run_name=run_name).info.run_id)

    def run_params(self, run_id: str) -> dict[str, str]:
        self.experiment_id()
        try:
            run = self.client.get_run(run_id)
        except Exception:
            raise NotFound(f"no MLflow run {run_id!r} in {self.uri}") from None
        return dict(run.data.params)

    def mark_running(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log finite numeric metrics in one batch (NaN and inf are left out)."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_artifact(self, run_id: str, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def download_artifact(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        import mlflow

        self.experiment_id()
        dst.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)
        )
        return Path(local)

    def local_artifact(self, run_id: str, artifact_path: str) -> Path | None:
        """The artefact's own file when the artefact store is a local folder (no copy), else
        None."""
        from urllib.parse import unquote, urlparse

        self.experiment_id()
        root = str(self.client.get_run(run_id).info.artifact_uri)
        parsed = urlparse(root)
        if parsed.scheme not in ("", "file"):
            return None
        path = Path(unquote(parsed.path)) / artifact_path
        return path if path.is_file() else None

    # --- registry -------------------------------------------------------------------------

    def register_model(self, run_id: str, weights: Path, *, profile: str) -> int:
        """Log ``weights`` (a weights-only file) in the run's model folder and register that
        folder as a new version; the version.

        The weights are stored once: the folder holds the weights file and an ``MLmodel`` that
        describes it (a ``her2ops`` flavour: which profile, which loader), and the version's
        source is the run's folder itself (``runs:/<run>/weights``), so the registry adds no
        copy. Scoring reads that file with ``torch.load(weights_only=True)``.
        """
        import tempfile

        from mlflow.exceptions import MlflowException
        from mlflow.models import Model

        self.experiment_id()
        weights = Path(weights)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            # a link, not a copy: the artefact store copies (or uploads) the file once
            (folder / WEIGHTS_FILE).symlink_to(weights.resolve())
            mlmodel = Model(
                run_id=run_id, artifact_path=MODEL_DIR, model_size_bytes=weights.stat().st_size
            )
            mlmodel.add_flavor(
                "her2ops",
                weights=WEIGHTS_FILE,
                profile=profile,
                loader="her2ops.models.network.load_network",
                code_version=code_version(),
            )
            mlmodel.save(str(folder / "MLmodel"))
            self.client.log_artifacts(run_id, str(folder), artifact_path=MODEL_DIR)
        try:
            self.client.create_registered_model(self.model_name)
        except MlflowException as exc:  # made by an earlier (or a concurrent) registration
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(
            self.model_name, source=f"runs:/{run_id}/{MODEL_DIR}", run_id=run_id
        )
        return int(mv.version)

    def delete_version(self, version: int) -> None:
        self.client.delete_model_version(self.model_name, str(version))

    def alias_version(self, alias: str) -> int | None:
        """The version that holds ``alias`` in the registry, or None."""
        try:
            return int(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except Exception:
            return None

    def set_alias(self, alias: str, version: int | None) -> None:
        """Point ``alias`` at ``version`` (None removes it)."""
        if version is None:
            try:
                self.client.delete_registered_model_alias(self.model_name, alias)
            except Exception:
                return
        else:
            self.client.set_registered_model_alias(self.model_name, alias, str(version))


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

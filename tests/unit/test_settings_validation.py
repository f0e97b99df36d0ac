"""Settings are validated at start-up: one line naming the variable, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from her2ops.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("HER2OPS_DATABASE_URL", "postgresql+psycopg://", "no host"),
        ("HER2OPS_DATABASE_URL", "postgresql+psycopg://u@db:5432", "no database name"),
        ("HER2OPS_DATABASE_URL", "mysql://u@h/db", "unsupported database"),
        ("HER2OPS_DATABASE_URL", "not a url", "not a database URL"),
        ("HER2OPS_STORE_JPEG_QUALITY", "0", "greater than or equal to 1"),
        ("HER2OPS_STORE_JPEG_QUALITY", "ninety", "valid integer"),
        ("HER2OPS_MAX_IMAGE_PIXELS", "-5", "greater than or equal to 1"),
        ("HER2OPS_DEVICE", "gpu7", "unknown device"),
        ("HER2OPS_MLFLOW_TRACKING_URI", "htp:/x", "is not a tracking store"),
        ("HER2OPS_MLFLOW_TRACKING_URI", "http://:5000", "no host"),
        ("HER2OPS_MLFLOW_TRACKING_URI", "http://host:port", "not a number"),
        ("HER2OPS_MLFLOW_TIMEOUT_S", "0", "greater than or equal to 1"),
    ],
)
def test_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as info:
        get_settings()
    message = str(info.value)
    assert name in message and says in message and "\n" not in message
    result = CliRunner().invoke(app, ["stats"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {message}"]


def test_data_dir_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("HER2OPS_DATA_DIR", str(blocker / "data"))
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match=r"HER2OPS_DATA_DIR: .*is not a folder"):
        get_settings()


def test_good_settings_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_DATABASE_URL", "postgres://u@db:5432/her2ops")
    monkeypatch.setenv("HER2OPS_DEVICE", "CUDA:1")
    monkeypatch.setenv("HER2OPS_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    get_settings.cache_clear()
    s = get_settings()
    assert s.database_url == "postgresql+psycopg://u@db:5432/her2ops"
    assert s.device == "cuda:1" and s.credentials_required
    assert s.mlflow_http_env()["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    monkeypatch.delenv("HER2OPS_DATABASE_URL")
    get_settings.cache_clear()
    assert not get_settings().credentials_required  # the embedded SQLite default


def test_unresponsive_mlflow_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: MLflow gives up within the
    configured timeout instead of hanging."""
    import socket
    import time

    import mlflow

    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: the request waits for an answer that never comes
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("HER2OPS_MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("HER2OPS_MLFLOW_TIMEOUT_S", "1")
        monkeypatch.setenv("HER2OPS_MLFLOW_MAX_RETRIES", "0")
        get_settings.cache_clear()
        settings = get_settings()
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timed? ?out|timeout"):
            mlflow.MlflowClient(settings.resolved_mlflow_uri).search_experiments()
        assert time.monotonic() - started < 15


def test_placeholder_cookie_secret_refused_outside_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from her2ops.config import get_settings
    from her2ops.errors import ConfigError

    monkeypatch.setenv("HER2OPS_DASHBOARD_COOKIE_SECRET", "change-me")
    get_settings.cache_clear()
    assert get_settings().dashboard_cookie_secret is not None  # SQLite default: allowed
    monkeypatch.setenv("HER2OPS_DATABASE_URL", "postgresql+psycopg://u@db.example:5432/her2ops")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="HER2OPS_DASHBOARD_COOKIE_SECRET is a placeholder"):
        get_settings()
    monkeypatch.setenv("HER2OPS_DASHBOARD_COOKIE_SECRET", "k" * 8 + "9fQ2xL7pZ0aB4cD")
    get_settings.cache_clear()
    assert get_settings().dashboard_cookie_secret is not None
    get_settings.cache_clear()

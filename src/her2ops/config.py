"""Settings read from the environment (prefix ``HER2OPS_``), through :func:`get_settings`.

Every value is validated when the settings are first read: a bad one ends the command with one
line naming the variable (:class:`~her2ops.errors.ConfigError`), never a traceback or a silent
fallback (an incomplete PostgreSQL URL would otherwise connect to libpq's default database).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from her2ops.errors import ConfigError

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d{1,2})?)$")
_PLACEHOLDERS = {"", "change-me", "changeme", "change_me", "secret", "password", "xxx", "todo"}
_MLFLOW_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "postgresql+psycopg", "mysql")


class Settings(BaseSettings):
    """Every knob of her2ops. Override with ``HER2OPS_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="HER2OPS_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./her2ops-data"), description="Root of local state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is a SQLite file in the data dir. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    max_image_pixels: int = Field(
        default=400_000_000,
        ge=1,
        le=10_000_000_000,
        description="Images with more pixels are refused before decoding (decompression bombs).",
    )
    store_dir: Path | None = Field(default=None, description="Image store; default DATA_DIR/store")
    store_lossless: bool = Field(default=False, description="Store cores losslessly (zlib).")
    store_jpeg_quality: int = Field(default=90, ge=1, le=100)
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Default: SQLite store under the data dir."
    )
    registered_model_name: str = Field(default="her2-pss", min_length=1, max_length=128)
    device: str | None = Field(default=None, description="torch device; default cuda if present.")
    # --- label policy and paper fidelity (issue 13) ---
    min_agreement: int = Field(
        default=2, ge=1, le=100, description="Voting protocol: agreeing votes a label needs."
    )
    min_votes: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Voting protocol: effective votes before a core is resolved "
        "(5 for the paper's protocol: five pathologists score every core).",
    )
    adjudicator_outside_panel: bool = Field(
        default=True,
        description="An adjudication vote must come from a user without an initial or review "
        "vote on the core.",
    )
    val_sets_per_core: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="PSSs per validation core for the validation loss (default: the profile's; "
        "5 for paper).",
    )
    # --- appended by the hardening issue -------------------------------------------------------
    require_credentials: bool | None = Field(
        default=None,
        description="Acting as a user needs their token or password. Default: required unless "
        "the database is SQLite (the embedded single-user default).",
    )
    token_file: Path | None = Field(
        default=None,
        description="Where 'her2ops login' keeps the personal token; default "
        "~/.config/her2ops/token (mode 0600).",
    )
    db_connect_timeout_s: int = Field(
        default=10, ge=1, le=600, description="PostgreSQL connect timeout."
    )
    mlflow_timeout_s: int = Field(
        default=30, ge=1, le=3600, description="Timeout of one MLflow HTTP request."
    )
    max_slide_pixels: int = Field(
        default=1_000_000_000,
        ge=1,
        le=20_000_000_000,
        description="TMA slides (dearray) with more pixels are refused before decoding.",
    )
    mlflow_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a failed MLflow HTTP request."
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        if value.startswith("postgres://"):
            value = "postgresql://" + value[len("postgres://") :]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (expected sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST:5432/DB)"
            ) from None
        backend = url.get_backend_name()
        if backend == "sqlite":
            if not url.database:
                raise ValueError("a SQLite URL needs a file: sqlite:///PATH")
        elif backend == "postgresql":
            if url.drivername != "postgresql+psycopg":
                raise ValueError(f"driver {url.drivername!r}: use postgresql+psycopg://")
            if not url.host and not url.query.get("host"):
                raise ValueError("no host (postgresql+psycopg://USER@HOST:5432/DB)")
            if not url.database:
                raise ValueError(
                    "no database name (postgresql+psycopg://USER@HOST:5432/DB); libpq would "
                    "silently pick a default one"
                )
        else:
            raise ValueError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_usable(cls, value: Path) -> Path:
        probe = value.expanduser().absolute()
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"{probe} is not a folder, so {value} cannot be created")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"{probe} is not writable, so {value} cannot be used or created")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}: expected cpu, cuda, cuda:N or mps")
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_uri(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme not in _MLFLOW_SCHEMES:
            raise ValueError(
                f"scheme {scheme or 'none'!r} is not a tracking store: expected "
                "http(s)://HOST:PORT, sqlite:///PATH, file:///PATH or a database URL"
            )
        if scheme in ("http", "https"):
            try:
                port = parts.port
            except ValueError:
                raise ValueError("the port is not a number") from None
            if not parts.hostname:
                raise ValueError("no host (http://HOST:PORT)")
            del port
        if scheme == "sqlite" and not value.startswith("sqlite:///"):
            raise ValueError("a SQLite store needs a file: sqlite:///PATH")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'her2ops.db').resolve()}"

    @property
    def resolved_store_dir(self) -> Path:
        return self.store_dir or (self.data_dir / "store")

    @property
    def resolved_mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def credentials_required(self) -> bool:
        """Whether acting as a user needs that user's credential (see the README)."""
        if self.require_credentials is not None:
            return self.require_credentials
        return not self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_token_file(self) -> Path:
        return self.token_file or Path.home() / ".config" / "her2ops" / "token"

    def mlflow_http_env(self) -> dict[str, str]:
        """MLflow's own variables that bound an HTTP call (an unreachable server must not hang)."""
        return {
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        }

    # --- background jobs (Celery workers; see the README's "Workers") ---
    broker_url: str | None = Field(
        default=None,
        description="Celery broker. Default: kombu's SQLAlchemy transport on a SQLite file "
        "DATA_DIR/broker.sqlite (no server). Production: redis://host:6379/0",
    )
    broker_key_prefix: str = Field(
        default="", description="Prefix of every Redis key of the broker (share one Redis)."
    )
    broker_visibility_timeout: int = Field(
        default=86_400,
        ge=60,
        description="Seconds before Redis re-delivers an unacknowledged message; longer than "
        "the longest job (crash recovery is the job lease's business, not this).",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A running job's lease; its worker renews it every third of this. A job "
        "whose lease expired is given to another worker (or failed after max attempts).",
    )
    job_max_attempts: int = Field(default=3, ge=1, description="Attempts before a job fails.")
    job_redispatch_seconds: float = Field(
        default=300.0,
        gt=0,
        description="The dispatcher re-sends a queued job's message after this many seconds "
        "(a message lost by the broker); duplicates are harmless.",
    )
    dispatcher_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the dispatcher looks at the jobs table."
    )
    jobs_selftest: bool = Field(
        default=False, description="Enable the internal 'selftest' job kind (fault tests only)."
    )

    # --- dashboards (Streamlit) and the deployed stack ---
    dashboard_cookie_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs the dashboard's cookies (Streamlit server.cookieSecret). "
        "Required, and no placeholder, outside the embedded SQLite default.",
    )

    # --- review queue (active learning) ---
    review_lease_s: int = Field(
        default=900,
        ge=1,
        description="Seconds a review claim lasts before it returns to the queue.",
    )

    @model_validator(mode="after")
    def _no_placeholder_secret(self) -> Settings:
        """Outside the embedded default a placeholder secret is refused (a copied .env.example
        must not go live); the embedded single-user default needs none."""
        if self.resolved_database_url.startswith("sqlite"):
            return self
        secret = self.dashboard_cookie_secret
        if secret is not None:
            value = secret.get_secret_value().strip()
            if value.lower() in _PLACEHOLDERS or len(value) < 16:
                raise ValueError(
                    "HER2OPS_DASHBOARD_COOKIE_SECRET is a placeholder or shorter than 16 "
                    "characters; "
                    "generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return self

    # --- active learning: when new labels justify a retrain ---
    retrain_min_new_labels: int = Field(
        default=50, ge=1, description="Retrain when this many new training labels appeared..."
    )
    retrain_min_changed_labels: int = Field(
        default=20, ge=1, description="...or this many changed (or lost) since the champion."
    )

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields names its variables itself
            parts.append(msg)
            continue
        field = str(err["loc"][0])
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
        parts.append(f"HER2OPS_{field.upper()}: {msg}{shown}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env.

    Raises :class:`ConfigError` with one line naming each bad variable.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(f"bad setting: {_one_line(exc)}") from None
    for key, value in settings.mlflow_http_env().items():
        os.environ.setdefault(key, value)
    return settings

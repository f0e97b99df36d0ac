"""Settings read from the environment (prefix ``HER2OPS_``), through :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        description="Images with more pixels are refused before decoding (decompression bombs).",
    )
    store_dir: Path | None = Field(default=None, description="Image store; default DATA_DIR/store")
    store_lossless: bool = Field(default=False, description="Store cores losslessly (zlib).")
    store_jpeg_quality: int = Field(default=90, ge=1, le=100)
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Default: SQLite store under the data dir."
    )
    registered_model_name: str = "her2-pss"
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

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("postgres://"):
            value = "postgresql://" + value[len("postgres://") :]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()

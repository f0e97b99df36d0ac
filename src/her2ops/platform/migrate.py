"""Run Alembic from code: ``upgrade``, ``downgrade``, ``current`` (used by the CLI and tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from her2ops.config import get_settings
from her2ops.platform.db import check_connection, get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the package's migration tree and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url or get_settings().resolved_database_url)
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    url = url or get_settings().resolved_database_url
    check_connection(get_engine(url))
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str, url: str | None = None) -> None:
    """Migrate the database down to ``revision`` (``base`` empties it)."""
    url = url or get_settings().resolved_database_url
    check_connection(get_engine(url))
    command.downgrade(alembic_config(url), revision)


def current(url: str | None = None) -> str | None:
    """The revision the database is at, or None for an empty database."""
    engine = get_engine(url)
    check_connection(engine)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def heads() -> list[str]:
    """The tree's head revisions (one, as a test asserts)."""
    return list(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def head() -> str:
    """The newest revision of the tree."""
    return ",".join(heads())


def ensure_current(url: str | None = None) -> None:
    """Upgrade if the database is behind (the embedded default needs no separate step)."""
    if current(url) != head():
        upgrade(url)

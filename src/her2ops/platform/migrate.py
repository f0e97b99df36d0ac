"""Run Alembic from code: ``upgrade``, ``downgrade``, ``current`` (used by the CLI and tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from her2ops.config import get_settings
from her2ops.platform.db import check_connection, get_engine
from her2ops.platform.errors import PermissionDenied

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the package's migration tree and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url or get_settings().resolved_database_url)
    return cfg


#: PostgreSQL's SQLSTATE for "insufficient privilege" (also "must be owner of table")
INSUFFICIENT_PRIVILEGE = "42501"


@contextmanager
def _schema_change(url: str, what: str) -> Iterator[None]:
    """A database user that may not change the schema (production's application role) gets one
    line naming it, not a driver traceback: migrations run as the schema's owner."""
    try:
        yield
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        reason = str(exc.orig).strip().splitlines()[0]
        user = make_url(url).username or "this user"
        raise PermissionDenied(
            f"{what} refused by the database: {user!r} may not change the schema ({reason}); "
            "run migrations as the schema's owner (README: the two database roles)"
        ) from None


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    url = url or get_settings().resolved_database_url
    check_connection(get_engine(url))
    with _schema_change(url, f"db upgrade {revision}"):
        command.upgrade(alembic_config(url), revision)


def downgrade(revision: str, url: str | None = None) -> None:
    """Migrate the database down to ``revision`` (``base`` empties it)."""
    url = url or get_settings().resolved_database_url
    check_connection(get_engine(url))
    with _schema_change(url, f"db downgrade {revision}"):
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

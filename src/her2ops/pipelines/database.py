"""Schema migrations as use cases (``her2ops db``)."""

from __future__ import annotations

from typing import Any

from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import migrate


def upgrade(*, revision: str = "head") -> dict[str, Any]:
    """Migrate the configured database up to ``revision``."""
    url = get_runtime().database_url
    migrate.upgrade(url, revision=revision)
    return {"current": migrate.current(url), "head": migrate.head()}


def downgrade(*, revision: str) -> dict[str, Any]:
    """Migrate the configured database down to ``revision`` (``base`` empties it)."""
    url = get_runtime().database_url
    migrate.downgrade(revision, url)
    return {"current": migrate.current(url), "head": migrate.head()}


def current() -> dict[str, Any]:
    """The database's revision and the newest one the code knows."""
    url = get_runtime().database_url
    return {"current": migrate.current(url), "head": migrate.head()}

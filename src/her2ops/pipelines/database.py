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


def downgrade(
    *,
    actor: str | None,
    revision: str,
    yes: bool = False,
    i_know_this_deletes_data: bool = False,
) -> dict[str, Any]:
    """Migrate the configured database down to ``revision`` (``base`` empties it): an admin,
    ``yes``, and on PostgreSQL ``i_know_this_deletes_data`` (see ``pipelines.admin``)."""
    from her2ops.pipelines.admin import downgrade_database

    return downgrade_database(
        actor=actor,
        revision=revision,
        yes=yes,
        i_know_this_deletes_data=i_know_this_deletes_data,
        url=get_runtime().database_url,
    )


def current() -> dict[str, Any]:
    """The database's revision and the newest one the code knows."""
    url = get_runtime().database_url
    return {"current": migrate.current(url), "head": migrate.head()}

"""One Alembic tree for both dialects: single head, round trip with rows, no drift from the ORM."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from her2ops.platform import migrate
from her2ops.platform.db import get_engine, session_scope
from her2ops.platform.schema import Base, Patient


def test_single_head() -> None:
    assert len(migrate.heads()) == 1


def test_round_trip_with_rows(blank_db_url: str) -> None:
    migrate.upgrade(blank_db_url)
    assert migrate.current(blank_db_url) == migrate.head()
    with session_scope(blank_db_url) as s:
        s.add(Patient(code="P1", site="A"))
        s.execute(
            text(
                "INSERT INTO users (username, role, active, created_at) "
                "VALUES ('u', 'admin', true, CURRENT_TIMESTAMP)"
            )
        )
    migrate.downgrade("base", blank_db_url)
    assert migrate.current(blank_db_url) is None
    tables = set(inspect(get_engine(blank_db_url)).get_table_names()) - {"alembic_version"}
    assert tables == set()
    migrate.upgrade(blank_db_url)
    with session_scope(blank_db_url) as s:
        assert s.scalar(select(func.count()).select_from(Patient)) == 0
        s.add(Patient(code="P1", site="A"))


def test_no_drift_from_orm(blank_db_url: str) -> None:
    migrate.upgrade(blank_db_url)
    with get_engine(blank_db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []

"""One Alembic tree for both dialects: single head, round trip with rows, no drift from the ORM."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from her2ops.errors import Conflict
from her2ops.platform import migrate
from her2ops.platform.db import get_engine, session_scope
from her2ops.platform.schema import Base, Core, Patient, Vote


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


_CORE = (
    "INSERT INTO cores (code, patient_id, source_path, sha256, width, height, status, "
    "needs_consensus, votes_version, created_at{page_column}) VALUES (:code, "
    "(SELECT id FROM patients), 'x.tif', :sha, 10, 10, 'ingested', false, 0, "
    "CURRENT_TIMESTAMP{page_value})"
)


def _add_core(url: str, code: str, sha: str, page: int | None = None) -> None:
    """A core row as raw SQL, so it works at any revision (with ``page`` from 0008 on)."""
    sql = _CORE.format(
        page_column=", page" if page is not None else "",
        page_value=", :page" if page is not None else "",
    )
    with get_engine(url).begin() as conn:
        conn.execute(text(sql), {"code": code, "sha": sha, "page": page})


def test_core_page_migration_keeps_rows_and_refuses_a_lossy_downgrade(blank_db_url: str) -> None:
    """0008 (a core's image is its file and page): existing cores get page 0 and keep the rows
    that refer to them; (sha256, page) is unique, sha256 alone no longer; a downgrade is refused
    while two cores share a file, and otherwise restores one core per file."""
    url, sha = blank_db_url, "ab" * 32
    migrate.upgrade(url, "0007")
    with get_engine(url).begin() as conn:
        conn.execute(
            text("INSERT INTO patients (code, created_at) VALUES ('P1', CURRENT_TIMESTAMP)")
        )
        conn.execute(
            text(
                "INSERT INTO users (username, role, active, created_at) "
                "VALUES ('u', 'admin', true, CURRENT_TIMESTAMP)"
            )
        )
    _add_core(url, "C1", sha)
    with get_engine(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO votes (core_id, user_id, score, round, seq, created_at) VALUES "
                "((SELECT id FROM cores), (SELECT id FROM users), '2+', 'initial', 0, "
                "CURRENT_TIMESTAMP)"
            )
        )

    migrate.upgrade(url, "0008")
    with session_scope(url) as s:
        core = s.scalar(select(Core))
        assert core is not None and (core.code, core.sha256, core.page) == ("C1", sha, 0)
        assert s.scalar(select(func.count()).select_from(Vote)) == 1
        if url.startswith("sqlite"):  # the migration turned them off; the pool has them on
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    _add_core(url, "C2", sha, page=1)  # another page of the same file
    with pytest.raises(IntegrityError):
        _add_core(url, "C3", sha, page=1)  # the same page again
    with pytest.raises(IntegrityError):
        _add_core(url, "C4", sha, page=-1)

    with pytest.raises(Conflict, match="several cores come from pages of one file"):
        migrate.downgrade("0007", url)
    assert migrate.current(url) == "0008"
    with get_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM cores WHERE code = 'C2'"))
    migrate.downgrade("0007", url)
    assert migrate.current(url) == "0007"
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT code, sha256 FROM cores")).all() == [("C1", sha)]
        assert conn.execute(text("SELECT COUNT(*) FROM votes")).scalar() == 1
    assert "page" not in {c["name"] for c in inspect(get_engine(url)).get_columns("cores")}
    with pytest.raises(IntegrityError):
        _add_core(url, "C2", sha)  # one core per file again
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()


def test_no_drift_from_orm(blank_db_url: str) -> None:
    migrate.upgrade(blank_db_url)
    with get_engine(blank_db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []

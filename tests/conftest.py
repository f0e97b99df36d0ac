"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings isolated per test.

Every database test runs on both dialects through the ``db_url`` fixture. PostgreSQL tests get a
database of their own, cloned from a migrated template (CREATE DATABASE ... TEMPLATE is fast),
and dropped afterwards. With ``CI=true`` an unreachable PostgreSQL fails the run; elsewhere those
tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

PG_ADMIN_URL = os.environ.get(
    "HER2OPS_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_TEMPLATE = f"her2ops_tpl_{uuid.uuid4().hex[:8]}"


def _pg_admin_conn() -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg

    dsn = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own data dir and no stray HER2OPS_* settings from the environment."""
    from her2ops.config import get_settings

    for key in list(os.environ):
        if key.startswith("HER2OPS_") and not key.startswith("HER2OPS_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HER2OPS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; tests copy it."""
    from her2ops.platform import migrate
    from her2ops.platform.db import reset_engines

    path = tmp_path_factory.mktemp("tpl") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    reset_engines()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """Name of a migrated PostgreSQL template database, or None (skip) when unreachable."""
    try:
        conn = _pg_admin_conn()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is unreachable at {PG_ADMIN_URL}: {exc}")
        yield None
        return
    from her2ops.platform import migrate
    from her2ops.platform.db import reset_engines

    with conn:
        conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
    migrate.upgrade(_pg_url(_TEMPLATE))
    reset_engines()
    yield _TEMPLATE
    with _pg_admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """URL of a freshly migrated database; also set as HER2OPS_DATABASE_URL for the test."""
    from her2ops.config import get_settings
    from her2ops.platform.db import reset_engines

    if request.param == "sqlite":
        path = tmp_path / "her2ops.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        dbname = None
    else:
        template = request.getfixturevalue("pg_template")
        if template is None:
            pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
        dbname = f"her2ops_t_{uuid.uuid4().hex[:12]}"
        with _pg_admin_conn() as conn:
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template}"')
        url = _pg_url(dbname)
    monkeypatch.setenv("HER2OPS_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    reset_engines()
    if dbname:
        with _pg_admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); fail under CI=true, else skip."""
    try:
        conn = _pg_admin_conn()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    dbname = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield _pg_url(dbname)
    finally:
        from her2ops.platform.db import reset_engines

        reset_engines()
        with _pg_admin_conn() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (unmigrated) database on each dialect, for migration tests."""
    from her2ops.platform.db import reset_engines

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        reset_engines()
        return
    with pg_database("her2ops_b") as url:
        yield url

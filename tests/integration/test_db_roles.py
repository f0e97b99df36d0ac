"""The production stack's two PostgreSQL roles, on a real server.

docker-compose.yml runs migrations as the schema's owner and everything else as an application
role made by ``deploy/postgres-app-role.sql`` (run by ``deploy/postgres-init/02-app-role.sh``, at
the volume's first initialisation and again by the ``db-grants`` service after each migration).
These tests replay that sequence on a database and two roles of their own (roles are cluster-wide:
unique names, dropped at the end) and check that the application's writes work as the app role,
while what would undo the append-only rule or the schema is refused by PostgreSQL itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from her2ops.config import get_settings
from her2ops.pipelines import review as review_use_cases
from her2ops.platform import auth, jobs, migrate
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import add_user, ingest_manifest
from her2ops.platform.db import reset_engines, session_scope
from her2ops.platform.registry import record_alias
from her2ops.platform.schema import AuditEvent, Core, SplitAssignment, Vote
from her2ops.platform.splits import create_split
from her2ops.platform.votes import import_votes
from tests.conftest import PG_ADMIN_URL, _pg_admin_conn
from tests.factories import fail_or_skip, make_manifest, store, write_csv
from tests.integration.review_world import build_world

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
GRANT_SQL = ROOT / "deploy" / "postgres-app-role.sql"
INIT_SCRIPT = ROOT / "deploy" / "postgres-init" / "02-app-role.sh"
APPEND_ONLY = {"votes", "audit_events"}
PASSWORD = "a-long-password"  # her2ops users' password (not a database role's)


@dataclass(frozen=True)
class Roles:
    """A database owned by ``owner`` (who migrates) and the application role ``app``."""

    database: str
    owner: str
    owner_password: str
    app: str
    app_password: str

    def url(self, role: str) -> str:
        password = self.owner_password if role == self.owner else self.app_password
        url = make_url(PG_ADMIN_URL).set(username=role, password=password, database=self.database)
        return url.render_as_string(hide_password=False)

    def dsn(self, role: str) -> str:
        return self.url(role).replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def roles() -> Iterator[Roles]:
    """An empty database owned by a fresh owner role (LOGIN, CREATEROLE: not a superuser)."""
    if shutil.which("psql") is None:
        fail_or_skip("psql is not installed (postgresql-client)")
    try:
        admin = _pg_admin_conn()
    except Exception as exc:
        fail_or_skip(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {exc}")
    suffix = uuid.uuid4().hex[:10]
    made = Roles(
        database=f"her2ops_roles_{suffix}",
        owner=f"her2ops_owner_{suffix}",
        owner_password=uuid.uuid4().hex,
        app=f"her2ops_app_{suffix}",
        app_password=uuid.uuid4().hex,
    )
    try:
        with admin:
            admin.execute(
                f"CREATE ROLE \"{made.owner}\" LOGIN CREATEROLE PASSWORD '{made.owner_password}'"
            )
            admin.execute(f'CREATE DATABASE "{made.database}" OWNER "{made.owner}"')
        yield made
    finally:
        reset_engines()
        get_settings.cache_clear()
        with _pg_admin_conn() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{made.database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{made.app}"')
            admin.execute(f'DROP ROLE IF EXISTS "{made.owner}"')


def _run_init_script(r: Roles) -> None:
    """What the postgres image (fresh volume) and the db-grants service run, with their env."""
    url = make_url(r.url(r.owner))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=url.host or "127.0.0.1",
        PGPORT=str(url.port or 5432),
        PGPASSWORD=r.owner_password,
        POSTGRES_USER=r.owner,
        POSTGRES_DB=r.database,
        POSTGRES_APP_USER=r.app,
        POSTGRES_APP_PASSWORD=r.app_password,
        HER2OPS_APP_ROLE_SQL=str(GRANT_SQL),
    )
    done = subprocess.run(
        ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _psql(r: Roles, *variables: str) -> subprocess.CompletedProcess[str]:
    """The grant script run by hand (README), as the owner, with the given psql variables."""
    args = [a for v in variables for a in ("-v", v)]
    return subprocess.run(
        ["psql", "--no-psqlrc", "-d", r.dsn(r.owner), *args, "-f", str(GRANT_SQL)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _use(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the application (settings, engines) at ``url``."""
    reset_engines()
    monkeypatch.setenv("HER2OPS_DATABASE_URL", url)
    get_settings.cache_clear()


def _cli(
    r: Roles, role: str, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HER2OPS_")}
    env.update(
        HER2OPS_DATABASE_URL=r.url(role),
        HER2OPS_DATA_DIR=os.environ["HER2OPS_DATA_DIR"],
        PYTHONPATH=str(ROOT / "src"),
    )
    if token:
        env["HER2OPS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "her2ops", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _revision(r: Roles) -> str | None:
    reset_engines()
    return migrate.current(r.url(r.owner))


def _privileges(r: Roles) -> dict[str, set[str]]:
    """table -> the privileges the app role has on it (as PostgreSQL itself answers)."""
    kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    out: dict[str, set[str]] = {}
    with psycopg.connect(r.dsn(r.owner)) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        for (table,) in tables:
            out[table] = {
                kind
                for kind in kinds
                if conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (r.app, f"public.{table}", kind)
                ).fetchone()[0]  # type: ignore[index]
            }
    return out


def _refused(conn: psycopg.Connection, statement: str) -> None:
    """Run ``statement`` as the app role: it must fail for lack of privilege."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # SQLSTATE 42501
        conn.execute(statement)
    conn.rollback()


def _app_writes(tmp_path: Path) -> dict[str, int]:
    """A representative set of the application's writes, through its own functions."""
    world = build_world()  # users, patients, cores, votes, a split, a model version, predictions
    with session_scope() as s:
        add_user(s, actor="admin", username="lm2", role="lab_manager")
        auth.set_password(s, actor="admin", username="admin", password=PASSWORD)
    with session_scope() as s:  # a login: writes the token's digest into users
        assert auth.issue_token(s, username="admin", password=PASSWORD)
    manifest = make_manifest(tmp_path / "ingest", 4)
    with session_scope() as s:
        ingest_manifest(s, actor="lm", manifest=manifest, store=store(), max_pixels=10**8)
    votes = write_csv(
        tmp_path / "votes.csv",
        ("core", "pathologist", "score"),
        [(f"C{i:05d}", p, "2+") for i in range(4) for p in world.pathologists],
    )
    with session_scope() as s:
        import_votes(s, actor="lm", path=votes)
    with session_scope() as s:
        apply_consensus(s, actor="lm")  # updates cores (marks) and consensus labels
    for replace in (False, True):  # the second replaces the first: DELETE of its rows
        with session_scope() as s:
            create_split(
                s, actor="lm", name="alt", seed=1, ratios={"train": 0.5, "test": 0.5},
                replace=replace,
            )  # fmt: skip
    with session_scope() as s:
        record_alias(s, actor="eng", ref="1", name="her2-pss", alias="challenger")
    with session_scope() as s:
        job, created = jobs.submit(
            s, kind="evaluate", queue="cpu", params={"x": 1}, actor="eng", max_attempts=3
        )
        assert created
        job_id = job.id
    with session_scope() as s:
        claim = jobs.claim(s, job_id=job_id, worker="w@test", lease_seconds=60)
        assert claim is not None
    with session_scope() as s:
        jobs.finish(s, job_id=job_id, token=claim.token, result={"ok": True})
    review_use_cases.add_items(actor="lm", cores=["K2-0"], reason="second look")
    item = review_use_cases.next_item(actor="p1")
    assert item is not None
    review_use_cases.submit(actor="p1", item=item["item"], score="3+", token=item["claim"]["token"])
    with session_scope() as s:
        return {
            "cores": int(s.scalar(select(func.count()).select_from(Core)) or 0),
            "votes": int(s.scalar(select(func.count()).select_from(Vote)) or 0),
            "audit": int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0),
            "assigned": int(s.scalar(select(func.count()).select_from(SplitAssignment)) or 0),
        }


def test_the_app_role_writes_rows_and_cannot_touch_the_schema_or_the_append_only_tables(
    roles: Roles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = roles
    head = migrate.head()
    tree = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    before_head = tree.get_revision(head).down_revision
    assert isinstance(before_head, str)

    # 1. A fresh volume: the init script runs on the still empty database.
    _run_init_script(r)
    # 2. `migrate` (as the owner) creates the tables, one revision short of the head here.
    reset_engines()
    migrate.upgrade(r.url(r.owner), revision=before_head)
    # ... which the app role cannot finish: PostgreSQL refuses it the CREATE/ALTER.
    upgrade = _cli(r, r.app, "db", "upgrade")
    # one line naming the user and what to do, not an "internal error" with a traceback
    assert upgrade.returncode == 1, upgrade.stdout + upgrade.stderr
    assert upgrade.stderr.strip().splitlines() == [upgrade.stderr.strip()]
    # PostgreSQL's own words: a new table in the schema, or a change to an owner's table
    refusals = ("permission denied for schema public", "must be owner of table")
    assert any(refusal in upgrade.stderr for refusal in refusals), upgrade.stderr
    assert f"{r.app!r} may not change the schema" in upgrade.stderr
    assert "run migrations as the schema's owner" in upgrade.stderr
    assert _revision(r) == before_head
    # 3. The owner finishes; tables made after the init script got the default privileges...
    migrate.upgrade(r.url(r.owner))
    assert _revision(r) == head
    granted = _privileges(r)
    assert {"SELECT", "INSERT", "UPDATE", "DELETE"} <= granted["review_items"]
    assert "UPDATE" in granted["votes"]  # the default privileges know no table names
    # ... and `db-grants` narrows them to what the application needs, taking back the rest.
    with psycopg.connect(r.dsn(r.owner)) as conn:
        conn.execute(f'GRANT TRUNCATE, TRIGGER ON votes TO "{r.app}"')
    _run_init_script(r)

    privileges = _privileges(r)
    assert set(privileges) >= APPEND_ONLY | {"alembic_version", "jobs", "users", "review_items"}
    for table, have in privileges.items():
        if table in APPEND_ONLY:
            assert have == {"SELECT", "INSERT"}, table
        elif table == "alembic_version":
            assert have == {"SELECT"}, table
        else:
            assert have == {"SELECT", "INSERT", "UPDATE", "DELETE"}, table
    with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")) as admin:
        attributes = admin.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
            "rolcanlogin, rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s",
            (r.app,),
        ).fetchone()
        assert attributes == (False, False, False, False, False, True, True)
    with psycopg.connect(r.dsn(r.owner)) as conn:
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles "
            "WHERE rolname = %s)",
            (r.app,),
        ).fetchone()
        assert owned == (0,)
        schema_and_db = conn.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE'), "
            "has_database_privilege(%s, current_database(), 'CREATE'), "
            "has_database_privilege(%s, current_database(), 'TEMPORARY')",
            (r.app, r.app, r.app),
        ).fetchone()
        assert schema_and_db == (False, False, False)

    # 4. As the app role: the application's writes work.
    _use(r.url(r.app), monkeypatch)
    counts = _app_writes(tmp_path)
    assert counts["cores"] == 8 + 4 and counts["votes"] == 8 * 3 + 4 * 3 + 1
    assert counts["assigned"] > 0 and counts["audit"] > 0
    reset_engines()

    # 5. ... and what would undo the append-only rule or the schema is refused by PostgreSQL.
    destructive = [
        "DROP TABLE votes CASCADE",
        "ALTER TABLE votes DISABLE TRIGGER ALL",
        "ALTER TABLE votes DISABLE TRIGGER USER",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
        "DROP TRIGGER votes_append_only ON votes",
        "DROP FUNCTION her2ops_append_only() CASCADE",
        "TRUNCATE votes CASCADE",
        "TRUNCATE audit_events CASCADE",
        "TRUNCATE jobs CASCADE",
        "UPDATE votes SET score = '0'",
        "DELETE FROM audit_events",
        "CREATE TABLE x ()",
        "CREATE TEMPORARY TABLE x ()",
        "ALTER TABLE jobs ADD COLUMN x integer",
        "UPDATE alembic_version SET version_num = 'base'",
        "DELETE FROM alembic_version",
    ]
    with psycopg.connect(r.dsn(r.app)) as conn:
        for statement in destructive:
            _refused(conn, statement)
    # The same statements are valid: the owner may run them (each rolled back here), bar the
    # two that the append-only triggers stop (and TRIGGER ALL, whose foreign-key triggers only a
    # superuser may disable: the owner's TRIGGER USER does what matters, as the next line shows).
    with psycopg.connect(r.dsn(r.owner)) as conn:
        for statement in destructive:
            if statement.endswith("DISABLE TRIGGER ALL"):
                continue
            with conn.transaction(force_rollback=True):
                if statement.startswith(("UPDATE votes", "DELETE FROM audit_events")):
                    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                        conn.execute(statement)
                else:
                    conn.execute(statement)

    # 6. A downgrade: an admin with a token and both flags passes the application's checks, and
    #    the database refuses the DROPs; nothing is lost.
    with session_scope(r.url(r.app)) as s:
        token = auth.issue_token(s, username="admin", password=PASSWORD)
    reset_engines()
    down = _cli(
        r, r.app, "--as", "admin", "db", "downgrade", "base", "--yes",
        "--i-know-this-deletes-data", token=token,
    )  # fmt: skip
    assert down.returncode == 1, down.stdout + down.stderr
    assert "must be owner of table" in down.stderr and "may not change the schema" in down.stderr
    assert _revision(r) == head
    # the audit log says it was asked for and that it did not happen
    with psycopg.connect(r.dsn(r.owner)) as conn:
        actions = [
            row[0]
            for row in conn.execute(
                "SELECT action FROM audit_events WHERE action LIKE 'db.downgrade%' ORDER BY id"
            )
        ]
    assert actions == ["db.downgrade", "db.downgrade_failed"]
    with psycopg.connect(r.dsn(r.owner)) as conn:
        assert conn.execute("SELECT count(*) FROM votes").fetchone() == (counts["votes"],)


def test_the_grant_script_refuses_what_would_give_away_too_much(roles: Roles) -> None:
    r = roles
    refused = {  # psql variables -> what the error says
        (f"app_role={r.app}",): "app_password is not set",
        (f"app_role={r.app}", "app_password="): "app_password is empty or the placeholder",
        (f"app_role={r.app}", "app_password=change-me"): "app_password is empty or the placeholder",
        (f"app_role={r.owner}", f"app_password={r.app_password}"): "not the owner",
    }
    for variables, message in refused.items():
        done = _psql(r, *variables)
        assert done.returncode != 0 and message in done.stderr, (variables, done.stderr)
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = "SELECT count(*) FROM pg_roles WHERE rolname = %s"
        assert conn.execute(exists, (r.app,)).fetchone() == (0,)
        # An existing role with more rights than rows and columns is refused, not used as it is.
        conn.execute(f'CREATE ROLE "{r.app}" LOGIN CREATEDB')
        done = _psql(r, f"app_role={r.app}", f"app_password={r.app_password}")
        assert done.returncode != 0 and "CREATEDB" in done.stderr, done.stderr
        conn.execute(f'GRANT "{r.owner}" TO "{r.app}"')
        conn.execute(f'ALTER ROLE "{r.app}" NOCREATEDB')
        done = _psql(r, f"app_role={r.app}", f"app_password={r.app_password}")
        assert done.returncode != 0 and "member of the owner role" in done.stderr, done.stderr
        conn.execute(f'REVOKE "{r.owner}" FROM "{r.app}"')
        done = _psql(r, f"app_role={r.app}", f"app_password={r.app_password}")
        assert done.returncode == 0, done.stderr

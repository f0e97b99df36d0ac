"""MLflow's own PostgreSQL role, on a real server.

docker-compose.yml's MLflow server logs in as a role made by ``deploy/postgres-mlflow-role.sql``
(run by ``deploy/postgres-init/01-mlflow-role.sh`` at the volume's first initialisation, and again
by the ``db-grants`` service before MLflow starts). That role owns MLflow's database and what is
in it, and may not connect to her2ops'. These tests run the script as the stack does on stand-ins
of their own for both databases and both roles (roles are cluster-wide: unique names, dropped at
the end): on a fresh volume, and on an installation from before the role, whose MLflow tables
the owner made, where only what is in MLflow's database changes hands. A real ``mlflow server``
then runs on the role.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, _pg_admin_conn
from tests.factories import fail_or_skip, serve_mlflow

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
ROLE_SQL = ROOT / "deploy" / "postgres-mlflow-role.sql"
INIT_SCRIPT = ROOT / "deploy" / "postgres-init" / "01-mlflow-role.sh"
ADMIN = make_url(PG_ADMIN_URL)
ATTRIBUTES = (
    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin, "
    "rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s"
)
NO_PRIVILEGE_BUT_LOGIN = (False, False, False, False, False, True, True)


@dataclass(frozen=True)
class Cluster:
    """Stand-ins for her2ops' database and its owner, MLflow's database and MLflow's role."""

    her2ops: str
    mlflow: str
    owner: str
    owner_password: str
    role: str
    role_password: str

    def url(self, role: str, database: str) -> str:
        password = {self.owner: self.owner_password, self.role: self.role_password}.get(role)
        url = ADMIN.set(username=role, password=password, database=database)
        return url.render_as_string(hide_password=False)

    def dsn(self, role: str, database: str) -> str:
        return self.url(role, database).replace("postgresql+psycopg://", "postgresql://")

    def admin(self, database: str) -> psycopg.Connection:
        return psycopg.connect(self.dsn(ADMIN.username or "postgres", database), autocommit=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """her2ops' stand-in, owned by a fresh owner role (LOGIN CREATEROLE CREATEDB: not a
    superuser); MLflow's database and role are only named, for the script or the test to make."""
    if shutil.which("psql") is None:
        fail_or_skip("psql is not installed (postgresql-client)")
    try:
        admin = _pg_admin_conn()
    except Exception as exc:
        fail_or_skip(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {exc}")
    suffix = uuid.uuid4().hex[:10]
    made = Cluster(
        her2ops=f"her2ops_mlrole_{suffix}",
        mlflow=f"mlflow_mlrole_{suffix}",
        owner=f"her2ops_owner_{suffix}",
        owner_password=uuid.uuid4().hex,
        role=f"her2ops_mlflow_{suffix}",
        role_password=uuid.uuid4().hex,
    )
    try:
        with admin:
            admin.execute(
                f'CREATE ROLE "{made.owner}" LOGIN CREATEROLE CREATEDB '
                f"PASSWORD '{made.owner_password}'"
            )
            admin.execute(f'CREATE DATABASE "{made.her2ops}" OWNER "{made.owner}"')
        yield made
    finally:
        with _pg_admin_conn() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{made.mlflow}" WITH (FORCE)')
            admin.execute(f'DROP DATABASE IF EXISTS "{made.her2ops}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{made.role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{made.owner}"')


def _run_init_script(c: Cluster, runner: str) -> None:
    """What the postgres image (fresh volume) and the db-grants service run, with their env;
    ``runner`` is POSTGRES_USER: the owner, or the cluster's superuser as in the stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=ADMIN.host or "127.0.0.1",
        PGPORT=str(ADMIN.port or 5432),
        POSTGRES_USER=runner,
        POSTGRES_DB=c.her2ops,
        POSTGRES_MLFLOW_USER=c.role,
        POSTGRES_MLFLOW_PASSWORD=c.role_password,
        POSTGRES_MLFLOW_DB=c.mlflow,
        HER2OPS_MLFLOW_ROLE_SQL=str(ROLE_SQL),
    )
    password = c.owner_password if runner == c.owner else ADMIN.password
    if password:
        env["PGPASSWORD"] = password
    done = subprocess.run(
        ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _runner(c: Cluster, which: str) -> str:
    return c.owner if which == "owner" else (ADMIN.username or "postgres")


def _owners(c: Cluster, database: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> owner of the schemas, relations, types and routines that users made."""
    user_schema = (
        "n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
    )
    queries = {
        "schema": "SELECT n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace AS n "
        f"WHERE {user_schema}",
        "relation": "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_class AS c "
        f"JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE {user_schema}",
        "type": "SELECT t.oid::regtype::text, pg_get_userbyid(t.typowner) FROM pg_type AS t "
        f"JOIN pg_namespace AS n ON n.oid = t.typnamespace WHERE {user_schema}",
        "routine": "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc "
        f"AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace WHERE {user_schema}",
    }
    with c.admin(database) as conn:
        return {
            (kind, name): owner
            for kind, sql in queries.items()
            for name, owner in conn.execute(sql).fetchall()
        }


def _bootstrap_superuser(c: Cluster) -> str:
    with c.admin(c.her2ops) as conn:
        row = conn.execute("SELECT rolname FROM pg_authid WHERE oid = 10").fetchone()
    assert row is not None
    return str(row[0])


def _database_owner(c: Cluster, database: str) -> str | None:
    with c.admin(c.her2ops) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    return None if row is None else str(row[0])


def _check_the_role(c: Cluster) -> None:
    """The role: no attributes but LOGIN, owns MLflow's database, cannot connect to her2ops'."""
    assert _database_owner(c, c.mlflow) == c.role
    with c.admin(c.mlflow) as conn:
        assert conn.execute(ATTRIBUTES, (c.role,)).fetchone() == NO_PRIVILEGE_BUT_LOGIN
        assert conn.execute(
            "SELECT has_database_privilege(%s, %s, 'CONNECT'), "
            "has_database_privilege('public', %s, 'CONNECT'), "
            "has_database_privilege(%s, %s, 'CONNECT'), "
            "pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'MEMBER')",
            (c.role, c.her2ops, c.mlflow, c.role, c.mlflow, c.owner, c.role, c.role, c.owner),
        ).fetchone() == (False, False, True, False, False)
    # PostgreSQL itself refuses the login.
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(c.dsn(c.role, c.her2ops), connect_timeout=5).close()
    with psycopg.connect(c.dsn(c.role, c.mlflow), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (c.role,)


def _mlflow_schema_at(url: str, revision: str) -> None:
    """MLflow's tables as an older MLflow release migrated them, as ``url``'s user (what
    ``mlflow server`` does on an empty database, stopped at ``revision``)."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = create_engine(url)
    try:
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _mlflow_revisions() -> tuple[str, str]:
    """(head, a revision some migrations below it, which alter tables that exist by then)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config("sqlite://"))
    head = scripts.get_current_head()
    assert head is not None
    older: str = head
    for _ in range(6):
        down = scripts.get_revision(older).down_revision
        assert isinstance(down, str)
        older = down
    return head, older


def _mlflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlflow", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


def _create_experiment(server: str, name: str) -> str:
    request = urllib.request.Request(
        server + "/api/2.0/mlflow/experiments/create",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["experiment_id"])


@pytest.mark.slow
def test_a_fresh_volume_gives_mlflow_a_database_of_its_own_that_the_server_runs_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    assert _database_owner(c, c.mlflow) is None
    # As the image does on a fresh volume: as its superuser (POSTGRES_USER), before any table.
    _run_init_script(c, _runner(c, "superuser"))
    _check_the_role(c)
    # db-grants runs it again at every start: nothing changes, nothing fails.
    _run_init_script(c, _runner(c, "superuser"))
    _check_the_role(c)

    # MLflow creates its tables as the role, comes up healthy and writes.
    backend = c.url(c.role, c.mlflow)
    with serve_mlflow(backend, tmp_path) as server:
        assert _create_experiment(server, "written-as-its-own-role")
    owners = _owners(c, c.mlflow)
    assert ("relation", "alembic_version") in owners and ("relation", "experiments") in owners
    assert set(owners.values()) <= {c.role, "pg_database_owner"}, owners
    # ... and db-grants after that leaves it all as it is.
    _run_init_script(c, _runner(c, "superuser"))
    assert _owners(c, c.mlflow) == owners
    _check_the_role(c)


# A stand-in of each kind of object that the hand-over moves, made by the owner beside MLflow's.
OWNERS_OBJECTS = """
CREATE SCHEMA side;
CREATE TABLE side.by_identity (id integer GENERATED ALWAYS AS IDENTITY, n bigserial);
CREATE SEQUENCE side.free_standing;
CREATE TYPE side.mood AS ENUM ('ok', 'not ok');
CREATE DOMAIN side.positive AS integer CHECK (VALUE > 0);
CREATE TYPE side.span AS RANGE (subtype = float8);
CREATE TYPE side.pair AS (a integer, b integer);
CREATE VIEW side.experiment_names AS SELECT name FROM public.experiments;
CREATE MATERIALIZED VIEW side.experiment_count AS SELECT count(*) AS n FROM public.experiments;
CREATE FUNCTION side.one() RETURNS integer LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE side.nothing() LANGUAGE sql AS 'SELECT 1';
"""


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["superuser", "owner"])
def test_an_old_mlflow_database_is_handed_over_and_nothing_outside_it_changes_hands(
    cluster: Cluster, tmp_path: Path, runner: str
) -> None:
    """An installation from before the role: the owner created MLflow's database (the former
    01-mlflow-database.sql) and MLflow migrated it as the owner. The script runs as the stack's
    superuser, or as the owner itself (CREATEROLE CREATEDB, no superuser)."""
    c = cluster
    head, older = _mlflow_revisions()
    with c.admin(c.her2ops) as admin:
        admin.execute(f'CREATE DATABASE "{c.mlflow}" OWNER "{c.owner}"')
        admin.execute(f'REVOKE ALL ON DATABASE "{c.mlflow}" FROM PUBLIC')
    _mlflow_schema_at(c.url(c.owner, c.mlflow), older)
    with psycopg.connect(c.dsn(c.owner, c.mlflow), autocommit=True) as conn:
        conn.execute(OWNERS_OBJECTS)
    with psycopg.connect(c.dsn(c.owner, c.her2ops), autocommit=True) as conn:
        conn.execute("CREATE TABLE cores (id serial PRIMARY KEY)")
        conn.execute("CREATE TYPE score AS ENUM ('0', '1+', '2+', '3+')")
        conn.execute("CREATE FUNCTION her2ops_append_only() RETURNS trigger LANGUAGE plpgsql "
                     "AS 'BEGIN RETURN NULL; END'")  # fmt: skip
    before = _owners(c, c.mlflow)
    # Besides the owner's: the public schema (pg_database_owner) and the range type's constructor
    # functions, which PostgreSQL gives the bootstrap superuser and which go with their type.
    bootstrap = _bootstrap_superuser(c)
    assert set(before.values()) == {c.owner, "pg_database_owner", bootstrap}
    constructors = {key for key in before if key[0] == "routine" and key[1].startswith("side.span")}
    assert len(constructors) >= 2  # span(lower, upper) and span(lower, upper, bounds)
    assert {key for key, owner in before.items() if owner == bootstrap} == constructors
    assert ("routine", "side.nothing()") in before and ("relation", "experiments") in before
    her2ops_before = _owners(c, c.her2ops)
    assert set(her2ops_before.values()) == {c.owner, "pg_database_owner"}

    _run_init_script(c, _runner(c, runner))

    # Everything in MLflow's database is the role's now (the public schema stays with
    # pg_database_owner, which is the database's owner: the role) ...
    after = _owners(c, c.mlflow)
    assert after == {key: c.role if owner == c.owner else owner for key, owner in before.items()}
    _check_the_role(c)
    # ... and nothing outside it changed hands: her2ops' database and what is in it.
    assert _database_owner(c, c.her2ops) == c.owner
    assert _owners(c, c.her2ops) == her2ops_before
    with c.admin(c.her2ops) as conn:  # the owner keeps its memberships: none
        assert conn.execute(
            "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", (c.owner,)
        ).fetchone() == (0,)

    # Twice is fine.
    _run_init_script(c, _runner(c, runner))
    assert _owners(c, c.mlflow) == after
    _check_the_role(c)

    # The role migrates MLflow's tables (ALTER TABLE, new constraints and indexes on the tables
    # the owner made: only their owner may), then the server runs on them.
    backend = c.url(c.role, c.mlflow)
    upgrade = _mlflow("db", "upgrade", backend)
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    with psycopg.connect(c.dsn(c.role, c.mlflow)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head,)
    with serve_mlflow(backend, tmp_path) as server:
        assert _create_experiment(server, "after-the-hand-over")
    assert set(_owners(c, c.mlflow).values()) == {c.role, "pg_database_owner", bootstrap}


def test_the_script_refuses_what_would_give_mlflow_too_much(cluster: Cluster) -> None:
    c = cluster

    def run(*variables: str) -> subprocess.CompletedProcess[str]:
        args = [a for v in variables for a in ("-v", v)]
        return subprocess.run(
            ["psql", "--no-psqlrc", "-d", c.dsn(c.owner, c.her2ops), *args, "-f", str(ROLE_SQL)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    database = f"mlflow_database={c.mlflow}"
    refused = {  # psql variables -> what the error says
        (f"mlflow_role={c.role}", database): "mlflow_password is not set",
        (f"mlflow_role={c.role}", "mlflow_password=", database): "empty or the placeholder",
        (f"mlflow_role={c.role}", "mlflow_password=change-me", database): "the placeholder",
        (f"mlflow_role={c.owner}", f"mlflow_password={c.role_password}", database): "not the owner",
        (
            f"mlflow_role={c.role}",
            f"mlflow_password={c.role_password}",
            f"mlflow_database={c.her2ops}",
        ): "a database of its own",
    }
    for variables, message in refused.items():
        done = run(*variables)
        assert done.returncode != 0 and message in done.stderr, (variables, done.stderr)
    assert _database_owner(c, c.mlflow) is None
    with c.admin(c.her2ops) as conn:
        exists = "SELECT count(*) FROM pg_roles WHERE rolname = %s"
        assert conn.execute(exists, (c.role,)).fetchone() == (0,)
        # An existing role with more than LOGIN is refused, not used as it is.
        conn.execute(f'CREATE ROLE "{c.role}" LOGIN CREATEDB')
        done = run(f"mlflow_role={c.role}", f"mlflow_password={c.role_password}", database)
        assert done.returncode != 0 and "CREATEDB" in done.stderr, done.stderr
        conn.execute(f'ALTER ROLE "{c.role}" NOCREATEDB')
        conn.execute(f'GRANT "{c.owner}" TO "{c.role}"')
        done = run(f"mlflow_role={c.role}", f"mlflow_password={c.role_password}", database)
        assert done.returncode != 0 and "member of the owner role" in done.stderr, done.stderr
        conn.execute(f'REVOKE "{c.owner}" FROM "{c.role}"')
        done = run(f"mlflow_role={c.role}", f"mlflow_password={c.role_password}", database)
        assert done.returncode == 0, done.stderr
    _check_the_role(c)

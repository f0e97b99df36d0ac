-- MLflow's PostgreSQL role: what the MLflow tracking server logs in as.
--
--   psql -v ON_ERROR_STOP=1 -d her2ops -U her2ops \
--        -v mlflow_role=her2ops_mlflow -v mlflow_password=SECRET -f deploy/postgres-mlflow-role.sql
--
-- Run it connected to her2ops' database as a superuser (the compose stack's `her2ops`) or as a
-- role with CREATEROLE and CREATEDB that owns the MLflow database and what is in it (it makes
-- itself a member of the MLflow role for the time it hands things over, which ALTER ... OWNER
-- requires, and leaves again). It may be run again at any time: it creates the role or sets its
-- password, creates the MLflow database (-v mlflow_database=NAME, default mlflow) if it is not
-- there, and brings ownership and privileges to exactly these:
--
--   the role owns the MLflow database and, in it, its schemas, tables, views, sequences, types
--   and functions (MLflow runs its own Alembic migrations when it starts or on `mlflow db
--   upgrade`, which alter and drop its tables: only an owner may);
--   nobody but the role (and superusers) may connect to the MLflow database;
--   the role may not connect to her2ops' database (this one), and has none of SUPERUSER,
--   CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS.
--
-- An MLflow database from before the role (created and migrated by the owner `her2ops`) is handed
-- over object by object, in that database only: `REASSIGN OWNED BY her2ops` would also give the
-- role the databases that her2ops owns (her2ops' own included) and everything her2ops owns in
-- the database it runs in.
--
-- The docker-compose stack runs it at the postgres volume's first initialisation
-- (deploy/postgres-init/01-mlflow-role.sh) and again, as the one-shot service db-grants, before
-- the mlflow service starts.

\set ON_ERROR_STOP on

\if :{?mlflow_role}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'psql variable mlflow_role is not set (-v mlflow_role=NAME)';
END $$;
\endif
\if :{?mlflow_password}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'psql variable mlflow_password is not set (-v mlflow_password=SECRET)';
END $$;
\endif
\if :{?mlflow_database}
\else
\set mlflow_database mlflow
\endif

SELECT
    current_database() AS app_database,
    :'mlflow_database' = current_database() AS mlflow_database_is_this_one,
    :'mlflow_password' IN ('', 'change-me') AS mlflow_password_unusable,
    :'mlflow_role' IN (
        current_user,
        (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())
    ) AS mlflow_role_is_owner,
    NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'mlflow_role') AS mlflow_role_is_new,
    EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = :'mlflow_role'
          AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls)
    ) AS mlflow_role_has_attributes,
    EXISTS (
        SELECT FROM pg_roles AS r, pg_database AS d
        WHERE r.rolname = :'mlflow_role' AND d.datname = current_database()
          AND (pg_has_role(r.oid, d.datdba, 'MEMBER') OR pg_has_role(r.oid, current_user, 'MEMBER'))
    ) AS mlflow_role_in_owner
\gset

\if :mlflow_database_is_this_one
DO $$ BEGIN
    RAISE EXCEPTION 'mlflow_database must be a database of its own, not the one connected to';
END $$;
\endif
\if :mlflow_password_unusable
DO $$ BEGIN
    RAISE EXCEPTION 'mlflow_password is empty or the placeholder change-me';
END $$;
\endif
\if :mlflow_role_is_owner
DO $$ BEGIN
    RAISE EXCEPTION 'mlflow_role must be a role of its own, not the owner or the role running this';
END $$;
\endif
\if :mlflow_role_has_attributes
DO $$ BEGIN
    RAISE EXCEPTION 'mlflow_role has one of SUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS';
END $$;
\endif
\if :mlflow_role_in_owner
DO $$ BEGIN
    RAISE EXCEPTION 'mlflow_role is a member of the owner role (it would act as the owner)';
END $$;
\endif

BEGIN;

\if :mlflow_role_is_new
CREATE ROLE :"mlflow_role" LOGIN PASSWORD :'mlflow_password';
\else
ALTER ROLE :"mlflow_role" LOGIN PASSWORD :'mlflow_password';
\endif

-- Not in her2ops' database: what every role may do there by default (PUBLIC's CONNECT and
-- TEMPORARY; postgres-app-role.sql takes them back too) and anything granted to the role itself.
REVOKE ALL ON DATABASE :"app_database" FROM :"mlflow_role";
REVOKE ALL ON DATABASE :"app_database" FROM PUBLIC;

-- CREATE DATABASE ... OWNER and ALTER ... OWNER TO ask a role that is not a superuser to be a
-- member of the new owner (PostgreSQL 16 and later: with the SET option, which GRANT gives by
-- default): for the time of the hand-over only, revoked at the end (the membership from a run that
-- failed half-way included).
SELECT rolsuper AS runner_is_superuser FROM pg_roles WHERE rolname = current_user
\gset
\if :runner_is_superuser
\else
GRANT :"mlflow_role" TO CURRENT_USER;
\endif

COMMIT;

-- Outside a transaction, as CREATE DATABASE must be.
SELECT format('CREATE DATABASE %I OWNER %I', :'mlflow_database', :'mlflow_role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'mlflow_database')
\gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', datname, :'mlflow_role')
FROM pg_database
WHERE datname = :'mlflow_database' AND datdba <> (SELECT oid FROM pg_roles WHERE rolname = :'mlflow_role')
\gexec
REVOKE ALL ON DATABASE :"mlflow_database" FROM PUBLIC;

-- Everything in the MLflow database that is not the role's yet, owned by whoever made it (the
-- owner, on an installation that predates the role): system schemas, objects of extensions and
-- those owned by pg_database_owner (already the role, as the database's owner) stay as they are.
\connect :"mlflow_database"

SELECT oid AS new_owner FROM pg_roles WHERE rolname = :'mlflow_role'
\gset

BEGIN;

SELECT format('ALTER SCHEMA %I OWNER TO %I', n.nspname, :'mlflow_role')
FROM pg_namespace AS n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND n.nspowner <> :new_owner AND pg_get_userbyid(n.nspowner) <> 'pg_database_owner'
  AND NOT EXISTS (
      SELECT FROM pg_depend AS d
      WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype IN ('e', 'i')
  )
ORDER BY n.nspname
\gexec

-- Tables (with their indexes, row types and the sequences of their serial and identity
-- columns), views, materialized views and foreign tables.
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              c.oid::regclass, :'mlflow_role')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relowner <> :new_owner
  AND NOT EXISTS (
      SELECT FROM pg_depend AS d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('e', 'i')
  )
ORDER BY c.oid
\gexec

-- The sequences left: those of no column (a column's sequence moved with its table above, and
-- may not be given an owner of its own).
SELECT format('ALTER SEQUENCE %s OWNER TO %I', c.oid::regclass, :'mlflow_role')
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND c.relkind = 'S' AND c.relowner <> :new_owner
  AND NOT EXISTS (
      SELECT FROM pg_depend AS d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('e', 'i')
  )
ORDER BY c.oid
\gexec

-- Enums, domains, ranges, multiranges (which ALTER TYPE of their range leaves behind on
-- PostgreSQL 15) and composite types of their own.
SELECT format('ALTER %s %s OWNER TO %I',
              CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
              t.oid::regtype, :'mlflow_role')
FROM pg_type AS t
JOIN pg_namespace AS n ON n.oid = t.typnamespace
LEFT JOIN pg_class AS c ON c.oid = t.typrelid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND (t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND c.relkind = 'c'))
  AND t.typowner <> :new_owner
  AND NOT EXISTS (
      SELECT FROM pg_depend AS d
      WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
  )
ORDER BY t.oid
\gexec

-- Functions, procedures and aggregates (MLflow's migrations create a trigger function).
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, :'mlflow_role')
FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND p.proowner <> :new_owner
  AND NOT EXISTS (
      SELECT FROM pg_depend AS d
      WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype IN ('e', 'i')
  )
ORDER BY p.oid
\gexec

\if :runner_is_superuser
\else
REVOKE :"mlflow_role" FROM CURRENT_USER;
\endif

COMMIT;

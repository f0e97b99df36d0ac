-- The application's PostgreSQL role: what the workers, the dispatcher and the dashboard log in as.
--
--   psql -v ON_ERROR_STOP=1 -d her2ops -U her2ops \
--        -v app_role=her2ops_app -v app_password=SECRET -f deploy/postgres-app-role.sql
--
-- Run it connected to her2ops' database as the role that owns the schema (the one `her2ops db
-- upgrade` runs as; `-v owner_role=NAME` when connected as another role, e.g. a superuser). It
-- needs CREATEROLE (or superuser) to create the role, and may be run again at any time: it
-- creates the role or sets its password, then brings the role's privileges to exactly these:
--
--   CONNECT on this database; USAGE on schema public;
--   SELECT, INSERT, UPDATE, DELETE on its tables, USAGE and SELECT on its sequences, the same on
--   the tables and sequences that later migrations create (default privileges of the owner);
--   no UPDATE or DELETE on the append-only tables (those with her2ops_append_only triggers: votes,
--   audit_events), only SELECT on alembic_version.
--
-- And nothing else: not the owner of anything, no CREATE on the schema, no TRUNCATE, REFERENCES
-- or TRIGGER, no temporary tables. Only an object's owner may DROP or ALTER it (so disable its
-- triggers), so the application's credentials cannot undo the append-only rule or the schema.
--
-- The docker-compose stack runs it at the postgres volume's first initialisation
-- (deploy/postgres-init/02-app-role.sh) and again after every migration (service db-grants), so a
-- table that a migration creates or recreates gets exactly these privileges too.

\set ON_ERROR_STOP on

\if :{?app_role}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'psql variable app_role is not set (-v app_role=NAME)';
END $$;
\endif
\if :{?app_password}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'psql variable app_password is not set (-v app_password=SECRET)';
END $$;
\endif
\if :{?owner_role}
\else
SELECT current_user AS owner_role \gset
\endif

SELECT
    current_database() AS app_database,
    :'app_password' IN ('', 'change-me') AS app_password_unusable,
    :'app_role' IN (:'owner_role', current_user) AS app_role_is_owner,
    NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_role') AS app_role_is_new,
    EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = :'app_role'
          AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls)
    ) AS app_role_has_attributes,
    EXISTS (
        SELECT FROM pg_roles
        WHERE rolname = :'app_role' AND pg_has_role(rolname, :'owner_role', 'MEMBER')
    ) AS app_role_in_owner
\gset

\if :app_password_unusable
DO $$ BEGIN
    RAISE EXCEPTION 'app_password is empty or the placeholder change-me';
END $$;
\endif
\if :app_role_is_owner
DO $$ BEGIN
    RAISE EXCEPTION 'app_role must be a role of its own, not the owner or the role running this';
END $$;
\endif
\if :app_role_has_attributes
DO $$ BEGIN
    RAISE EXCEPTION 'app_role has one of SUPERUSER CREATEROLE CREATEDB REPLICATION BYPASSRLS';
END $$;
\endif
\if :app_role_in_owner
DO $$ BEGIN
    RAISE EXCEPTION 'app_role is a member of the owner role (it would act as the owner)';
END $$;
\endif

BEGIN;

\if :app_role_is_new
CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password';
\else
ALTER ROLE :"app_role" LOGIN PASSWORD :'app_password';
\endif

-- Start from nothing, so that running this again also takes back what is no longer wanted.
REVOKE ALL ON DATABASE :"app_database" FROM :"app_role";
REVOKE ALL ON SCHEMA public FROM :"app_role";
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"app_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"app_role";

-- What every role gets by default (PUBLIC): keep only the owner and the app role in this
-- database, and nobody but the owner creating objects in its schema (PostgreSQL 15's default
-- already; older clusters granted it to everyone).
REVOKE ALL ON DATABASE :"app_database" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

GRANT CONNECT ON DATABASE :"app_database" TO :"app_role";
GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_role";

-- Tables and sequences that later migrations create (as the owner) get the same privileges.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    REVOKE ALL ON TABLES FROM :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    REVOKE ALL ON SEQUENCES FROM :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";

-- Append-only tables: their triggers refuse UPDATE and DELETE from anyone, and no code path
-- updates or deletes a vote or an audit event, so the app role is not granted them either.
SELECT DISTINCT format('REVOKE UPDATE, DELETE ON %s FROM %I', t.tgrelid::regclass, :'app_role')
FROM pg_trigger AS t
JOIN pg_proc AS p ON p.oid = t.tgfoid
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE p.proname = 'her2ops_append_only' AND n.nspname = 'public'
\gexec

-- The schema's revision is written by migrations only; the application reads it.
SELECT format('REVOKE INSERT, UPDATE, DELETE ON public.alembic_version FROM %I', :'app_role')
WHERE to_regclass('public.alembic_version') IS NOT NULL
\gexec

COMMIT;

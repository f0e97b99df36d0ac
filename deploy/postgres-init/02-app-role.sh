#!/usr/bin/env bash
# Creates the application's role (POSTGRES_APP_USER, password POSTGRES_APP_PASSWORD) with only the
# privileges it needs on POSTGRES_DB: see deploy/postgres-app-role.sql.
#
# Run twice over in the docker-compose stack, with the same environment:
# - by the postgres image, once, when its volume is first initialised (docker-entrypoint-initdb.d:
#   as POSTGRES_USER over the local socket; the schema is still empty then, and the role gets the
#   default privileges for the tables that the migrations will create);
# - by the one-shot service db-grants after every `her2ops db upgrade` (PGHOST=postgres and
#   PGPASSWORD as the owner), which also creates the role on an installation that predates it.
#
# No `set -e`/`exec` here: the image sources this file instead of running it when it is not
# executable, and its own `set -e` then stops the initialisation when psql fails.
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
  --username "${POSTGRES_USER:?}" --dbname "${POSTGRES_DB:?}" \
  -v app_role="${POSTGRES_APP_USER:?set POSTGRES_APP_USER}" \
  -v app_password="${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD}" \
  -f "${HER2OPS_APP_ROLE_SQL:-/her2ops/postgres-app-role.sql}"

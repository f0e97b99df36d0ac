#!/usr/bin/env bash
# Creates MLflow's role (POSTGRES_MLFLOW_USER, password POSTGRES_MLFLOW_PASSWORD) and its database
# (POSTGRES_MLFLOW_DB, default mlflow), which the role owns with everything in it, and which is
# the only database it may connect to: see deploy/postgres-mlflow-role.sql.
#
# Run twice over in the docker-compose stack, with the same environment (as 02-app-role.sh):
# - by the postgres image, once, when its volume is first initialised (docker-entrypoint-initdb.d:
#   as POSTGRES_USER over the local socket), which creates the database;
# - by the one-shot service db-grants at every `docker compose up` (PGHOST=postgres and PGPASSWORD
#   as POSTGRES_USER), before the mlflow service starts: on an installation that predates the role
#   it creates it and hands the existing mlflow database, and what the owner made in it, over.
#
# No `set -e`/`exec` here: the image sources this file instead of running it when it is not
# executable, and its own `set -e` then stops the initialisation when psql fails.
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
  --username "${POSTGRES_USER:?}" --dbname "${POSTGRES_DB:?}" \
  -v mlflow_role="${POSTGRES_MLFLOW_USER:?set POSTGRES_MLFLOW_USER}" \
  -v mlflow_password="${POSTGRES_MLFLOW_PASSWORD:?set POSTGRES_MLFLOW_PASSWORD}" \
  -v mlflow_database="${POSTGRES_MLFLOW_DB:-mlflow}" \
  -f "${HER2OPS_MLFLOW_ROLE_SQL:-/her2ops/postgres-mlflow-role.sql}"

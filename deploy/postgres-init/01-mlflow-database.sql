-- Run by the postgres image once, when its data volume is first initialised (as POSTGRES_USER):
-- MLflow keeps its tracking and registry tables in a database of its own (its table names, such
-- as model_versions and alembic_version, would collide with her2ops' schema).
CREATE DATABASE mlflow;
-- Only its owner (POSTGRES_USER, what the MLflow server logs in as) connects to it: not the
-- application's role (02-app-role.sh), which talks to MLflow over HTTP.
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;

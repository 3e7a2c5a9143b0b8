#!/bin/sh
# Creates the databases and owners of MLflow, Airflow and the prediction log on the first start of
# the PostgreSQL volume. Their passwords are the compose secrets mlflow_db_password,
# airflow_db_password and predictions_db_password.
set -eu
secrets=${BITLOOP_SECRETS_PATH:-/run/secrets}
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v mlflow_password="$(cat "$secrets/mlflow_db_password")" \
  -v airflow_password="$(cat "$secrets/airflow_db_password")" \
  -v predictions_password="$(cat "$secrets/predictions_db_password")" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE predictions LOGIN PASSWORD :'predictions_password';
CREATE DATABASE predictions OWNER predictions;
SQL

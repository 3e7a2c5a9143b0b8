"""Shared fixtures: one real MLflow server per test session, fresh workspaces per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.servers import Postgres, mlflow_server, postgres_server
from tests.tools import require_postgres

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

# HYPOTHESIS_PROFILE=ci (what .ci/run sets): the same examples every run, and a failure prints the
# blob that reproduces it. dev (the default): fresh examples each run.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite + local artefacts) on a free 127.0.0.1 port."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL (Debian's `postgresql` package) on a free 127.0.0.1 port."""
    require_postgres()
    with postgres_server() as server:
        yield server


_databases = iter(range(100_000))


@pytest.fixture
def postgres_log_url(postgres: Postgres) -> str:
    """The URL of a new, empty database on the shared PostgreSQL server."""
    import psycopg2

    name = f"log_{os.getpid()}_{next(_databases)}"
    admin = psycopg2.connect(postgres.url)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    admin.close()
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty prediction log on each store."""
    if request.param == "sqlite":
        return str(tmp_path / "predictions.sqlite")
    url: str = request.getfixturevalue("postgres_log_url")
    return url

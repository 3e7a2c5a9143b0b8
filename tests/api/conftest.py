"""A champion trained once per session, and apps serving it in process (real lifespan, real MLflow)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from core.schema import DatasetSchema
from core.settings import PipelineSettings
from pipeline.driver.run import run_all
from pipeline.workspace import Workspace, read_json
from tests.factories import DIABETES, light_params, make_workspace
from tests.servers import free_port, serve


@dataclass(frozen=True)
class Trained:
    name: str
    version: str
    workspace: Workspace
    schema: DatasetSchema


def train_model(root: Path, uri: str, name: str, **sections: dict[str, Any]) -> Trained:
    workspace, params = make_workspace(root, light_params(model={"name": name}, **sections))
    report = run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=uri))
    schema = DatasetSchema.model_validate(read_json(workspace.schema_file))
    return Trained(name, report["candidate"]["version"], workspace, schema)


@pytest.fixture(scope="session")
def churn_model(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    return train_model(tmp_path_factory.mktemp("api-churn"), mlflow_uri, "api-churn")


@pytest.fixture(scope="session")
def diabetes_model(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    return train_model(
        tmp_path_factory.mktemp("api-diabetes"),
        mlflow_uri,
        "api-diabetes",
        data=DIABETES,
    )


@contextmanager
def api_server(tmp_path: Path, uri: str, model: str, **env: str) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {
        "MLFLOW_TRACKING_URI": uri,
        "BITLOOP_API_MODEL_NAME": model,
        "BITLOOP_API_PORT": str(port),
        "BITLOOP_PREDICTION_LOG_URL": str(tmp_path / "predictions.sqlite"),
        "BITLOOP_API_RELOAD_INTERVAL_SECONDS": "0.5",
        **env,
    }
    with serve([sys.executable, "-m", "api"], f"{base}/health", tmp_path, settings, timeout=60):
        yield base


def holdout_records(trained: Trained, rows: int = 200) -> list[dict[str, Any]]:
    """Holdout rows as JSON records, missing values included."""
    frame = pd.read_parquet(trained.workspace.test_file)[trained.schema.feature_names].head(rows)
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(k): v for k, v in r.items()} for r in records]


def sample_record(schema: DatasetSchema) -> dict[str, Any]:
    return {f.name: (f.categories[0] if f.kind == "categorical" else 1.0) for f in schema.features}


@pytest.fixture
def make_client(tmp_path: Path, mlflow_uri: str) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(model_name: str, **overrides: Any) -> TestClient:
        defaults: dict[str, Any] = {
            "mlflow_tracking_uri": mlflow_uri,
            "model_name": model_name,
            "prediction_log_url": str(tmp_path / f"log-{len(clients)}.sqlite"),
            "prediction_log_spill_dir": tmp_path / f"spill-{len(clients)}",
            "reload_interval_seconds": 3600,
        }
        settings = ApiSettings(**(defaults | overrides))
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)

"""The rollout DAG, run with dag.test() against a real MLflow and prediction log: it waits while the
canary lacks records, promotes it once it has them, and updates the champion asset only then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from api.main import create_app
from api.settings import ApiSettings
from core.rollout import Terms, start
from tests.api.conftest import holdout_records, train_model
from tests.api.test_canary import linear
from tests.api.test_faults import register_version
from tests.dags.conftest import DAGS, asset_events

MODEL = "rollout-dag-churn"


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("rollout")


def test_decide_then_emit_every_minute_one_run_at_a_time(airflow_db: Path) -> None:
    import bitloop_stages

    dag = load_dag()
    assert [t.task_id for t in dag.topological_sort()] == ["decide", "ended", "emit"]
    assert [o.uri for o in dag.get_task("emit").outlets] == [bitloop_stages.CHAMPION.uri]
    assert dag.timetable.expression == "* * * * *"
    assert (dag.catchup, dag.max_active_runs) == (False, 1)


@pytest.mark.integration
@pytest.mark.slow
def test_the_dag_waits_for_evidence_then_promotes_the_canary(
    airflow_db: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = train_model(tmp_path / "project", mlflow_uri, MODEL, rollout={"min_requests": 100})
    registry = MlflowClient(mlflow_uri)
    stable = register_version(mlflow_uri, MODEL, linear(trained), trained)
    candidate = register_version(mlflow_uri, MODEL, linear(trained), trained)
    registry.set_registered_model_alias(MODEL, "champion", stable)
    start(registry, MODEL, candidate, stable, Terms(0.5, 100, 60.0))
    log = tmp_path / "predictions.sqlite"
    for name, value in {
        "BITLOOP_PROJECT_DIR": str(trained.workspace.root),
        "BITLOOP_PREDICTION_LOG_URL": str(log),
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BITLOOP_PROMETHEUS_URL", raising=False)  # records counted from the log

    waiting = load_dag().test()
    states = {ti.task_id: ti.state for ti in waiting.get_task_instances()}
    assert states == {"decide": "success", "ended": "success", "emit": "skipped"}
    assert asset_events("rollout", waiting.run_id) == []

    settings = ApiSettings(
        mlflow_tracking_uri=mlflow_uri,
        model_name=MODEL,
        prediction_log_url=str(log),
        prediction_log_spill_dir=tmp_path / "spill",
        reload_interval_seconds=3600,
    )
    records = holdout_records(trained, 400)
    with TestClient(create_app(settings)) as client:
        ids = [f"c{i}" for i in range(len(records))]
        assert client.post("/predict/batch", json={"records": records, "ids": ids}).status_code == 200

    done = load_dag().test()
    states = {ti.task_id: ti.state for ti in done.get_task_instances()}
    assert states == {"decide": "success", "ended": "success", "emit": "success"}
    [event] = asset_events("rollout", done.run_id)
    assert (event.extra["version"], event.extra["action"]) == (candidate, "promote")
    assert registry.get_model_version_by_alias(MODEL, "champion").version == candidate

"""The drift monitor DAG: wiring, and dag.test() runs that emit the drift asset only on drift."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow import MlflowClient

from core.settings import PipelineSettings
from pipeline.data.sources.simulated import TARGET, simulate_churn
from pipeline.driver.run import run_all
from tests.dags.conftest import DAGS, asset_events, starts_training
from tests.factories import light_params, log_predictions, make_workspace

MODEL = "drift-dag-churn"


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("drift_monitor")


def test_detect_then_gate_then_emit_hourly(airflow_db: Path) -> None:
    import bitloop_stages

    dag = load_dag()
    assert [t.task_id for t in dag.topological_sort()] == ["detect", "drifted", "emit"]
    assert dag.get_task("detect").downstream_task_ids == {"drifted", "emit"}
    assert [o.uri for o in dag.get_task("emit").outlets] == [bitloop_stages.DRIFT.uri]
    assert dag.get_task("detect").outlets == []
    assert dag.timetable.expression == "0 * * * *"  # @hourly
    assert dag.timetable.interval == timedelta(hours=1)
    assert dag.catchup is False
    assert dag.max_active_runs == 1


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Path:
    root = tmp_path_factory.mktemp("drift-project")
    workspace, params = make_workspace(root, light_params(model={"name": MODEL}))
    run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    return root


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_drifted_traffic_emits_the_asset_and_calm_traffic_does_not(
    airflow_db: Path, champion_project: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = champion_project / "predictions.sqlite"
    monkeypatch.setenv("BITLOOP_PROJECT_DIR", str(champion_project))
    monkeypatch.setenv("BITLOOP_PREDICTION_LOG_URL", str(log))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    dag = load_dag()
    client = MlflowClient(mlflow_uri)

    def reports() -> list[Any]:
        experiment = client.get_experiment_by_name(f"{MODEL}-monitoring")
        return [] if experiment is None else client.search_runs([experiment.experiment_id])

    # Too few rows in the window: a clean skip, nothing logged, nothing emitted.
    log_predictions(log, MODEL, simulate_churn(50, 11, 0.0).drop(columns=TARGET), time.time() - 60)
    sparse = dag.test()
    assert sparse.state == "success"
    states = {ti.task_id: ti.state for ti in sparse.get_task_instances()}
    assert states == {"detect": "success", "drifted": "success", "emit": "skipped"}
    assert asset_events("drift_monitor", sparse.run_id) == []
    assert reports() == []

    # Undrifted traffic: a report in MLflow, no asset event.
    log_predictions(log, MODEL, simulate_churn(1500, 12, 0.0).drop(columns=TARGET), time.time() - 60)
    calm = dag.test()
    assert {ti.task_id: ti.state for ti in calm.get_task_instances()}["emit"] == "skipped"
    assert asset_events("drift_monitor", calm.run_id) == []
    [calm_report] = reports()
    assert calm_report.data.tags["bitloop.dataset_drift"] == "false"

    # Drifted traffic outweighs it in the next window: the asset event carries the verdict.
    log_predictions(log, MODEL, simulate_churn(4000, 13, 1.0).drop(columns=TARGET), time.time() - 30)
    drifted = dag.test()
    assert {ti.task_id: ti.state for ti in drifted.get_task_instances()}["emit"] == "success"
    [event] = asset_events("drift_monitor", drifted.run_id)
    assert event.extra["drift_share"] >= 0.5
    assert "monthly_charges" in event.extra["drifted_features"]
    assert starts_training(event)  # the training DAG is scheduled on this asset
    latest = max(reports(), key=lambda r: r.info.start_time)
    assert latest.data.tags["bitloop.dataset_drift"] == "true"
    assert latest.data.metrics["drift_share"] == event.extra["drift_share"]
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id)}
    assert {"drift_report.json", "drift_report.html"} <= artifacts
    report = json.loads((champion_project / "reports" / MODEL / "drift.json").read_text())
    assert report["dataset_drift"] is True
    assert report["model"]["name"] == MODEL


def test_a_run_without_a_logical_date_reads_the_hour_before_it() -> None:
    from drift_monitor import data_window

    now = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    manual = {"dag_run": SimpleNamespace(run_after=now)}  # REST trigger with logical_date null
    assert data_window(manual) == (now - timedelta(hours=1), now)
    scheduled = {"data_interval_start": now - timedelta(hours=1), "data_interval_end": now, "dag_run": None}
    assert data_window(scheduled) == (now - timedelta(hours=1), now)
    zero = {"data_interval_start": now, "data_interval_end": now, "dag_run": None}
    assert data_window(zero) == (now - timedelta(hours=1), now)


@pytest.mark.integration
def test_the_drift_command_prints_only_its_json_result(
    champion_project: Path, mlflow_uri: str, tmp_path: Path
) -> None:
    """The DAG parses the CLI's stdout: MLflow's run links must not end up there."""
    log = tmp_path / "predictions.sqlite"
    log_predictions(log, MODEL, simulate_churn(600, 14, 1.0).drop(columns=TARGET), time.time() - 5)
    command = [sys.executable, "-m", "pipeline", "--root", str(champion_project), "drift"]
    done = subprocess.run(
        [*command, "--label", "cli-check", "--log", str(log)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
    )
    result = json.loads(done.stdout)
    assert result["status"] == "drift"
    assert result["mlflow_run_id"]

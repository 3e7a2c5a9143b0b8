"""The ground_truth DAG, run with dag.test() against a real model server and data source: the
outcomes the world released reach /feedback once, those not yet released wait, and live quality
counts them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from core.predictions.access import count_rows
from core.predictions.backends import open_store
from pipeline.data.sources.simulated import ID_COLUMN
from tests.api.conftest import Trained, train_model
from tests.dags.conftest import DAGS, asset_events, starts_training
from tests.factories import PROJECT
from tests.servers import free_port, serve

MODEL = "truth-dag-churn"
KEY = "truth-key"


def load_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("ground_truth")


def test_collect_then_judge_then_gate_then_emit_every_five_minutes(airflow_db: Path) -> None:
    import bitloop_stages

    dag = load_dag()
    assert [t.task_id for t in dag.topological_sort()] == ["collect", "judge", "degraded", "emit"]
    assert dag.get_task("judge").downstream_task_ids == {"degraded", "emit"}
    assert [o.uri for o in dag.get_task("emit").outlets] == [bitloop_stages.QUALITY.uri]
    assert dag.timetable.expression == "*/5 * * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert all(task.retries == 2 for task in dag.tasks)


def stored_outcomes(log: Path) -> dict[str | None, Any]:
    """entity id → stored outcome."""
    store = open_store(log)
    try:
        ids = {(r.request_id, r.row_index): r.entity_id for r in store.rows()}
        return {ids[(request, row)]: outcome for request, row, outcome, _ in store.outcomes()}
    finally:
        store.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    return train_model(tmp_path_factory.mktemp("truth-project"), mlflow_uri, MODEL)


@pytest.fixture
def services(tmp_path: Path, model: Trained, mlflow_uri: str) -> Iterator[dict[str, str]]:
    """A data source whose outcomes arrive at once and a model server with a key, sharing a log."""
    ports = {"source": free_port(), "api": free_port()}
    source, api = (f"http://127.0.0.1:{ports[name]}" for name in ("source", "api"))
    log = tmp_path / "predictions.sqlite"
    data = [sys.executable, "-m", "pipeline", "serve-data", "--port", str(ports["source"])]
    env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "BITLOOP_API_MODEL_NAME": model.name,
        "BITLOOP_API_PORT": str(ports["api"]),
        "BITLOOP_API_API_KEY": KEY,
        "BITLOOP_PREDICTION_LOG_URL": str(log),
    }
    with (
        serve([*data, "--outcome-delay", "0"], f"{source}/health", tmp_path / "source", timeout=60),
        serve([sys.executable, "-m", "api"], f"{api}/ready", tmp_path / "api", env, timeout=90),
    ):
        yield {"source": source, "api": api, "log": str(log), "project": str(model.workspace.root)}


def score_customers(services: dict[str, str], n: int, seed: int) -> list[str]:
    """Customers from the world, scored by the model server with their ids; the ids."""
    with httpx.Client(timeout=30, headers={"X-API-Key": KEY}) as client:
        frame = pd.read_csv(
            io.StringIO(client.get(f"{services['source']}/customers", params={"n": n, "seed": seed}).text)
        )
        ids = frame.pop(ID_COLUMN).tolist()
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        answer = client.post(f"{services['api']}/predict/batch", json={"records": records, "ids": ids})
        assert answer.status_code == 200, answer.text
    return ids


def point_the_dag_at(services: dict[str, str], project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BITLOOP_PROJECT_DIR": project,
        "BITLOOP_PREDICTION_LOG_URL": services["log"],
        "BITLOOP_DATA_SOURCE_URL": services["source"],
        "BITLOOP_API_URL": services["api"],
        "BITLOOP_API_API_KEY": KEY,
    }.items():
        monkeypatch.setenv(name, value)


def wait_logged(log: Path, rows: int) -> None:
    deadline = time.monotonic() + 10
    while count_rows(log) < rows:
        assert time.monotonic() < deadline, "the model server did not log its answers"
        time.sleep(0.2)


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_released_outcomes_reach_the_model_server_once(
    airflow_db: Path, services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    point_the_dag_at(services, services["project"], monkeypatch)
    log = Path(services["log"])
    released = score_customers(services, 300, 1)
    httpx.put(f"{services['source']}/world", json={"outcome_delay_seconds": 3600}, timeout=10)
    waiting = score_customers(services, 40, 2)  # their outcomes are an hour away
    wait_logged(log, 340)

    dag = load_dag()
    first = dag.test()
    assert first.state == "success"
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    assert states == {"collect": "success", "judge": "success", "degraded": "success", "emit": "skipped"}
    assert asset_events("ground_truth", first.run_id) == []  # the world did not change: quality holds
    truth = httpx.post(f"{services['source']}/outcomes", json={"ids": released}, timeout=10).json()
    expected = {o["id"]: o["outcome"] for o in truth["outcomes"]}
    assert stored_outcomes(log) == expected  # every released one, nothing else
    assert not set(waiting) & set(stored_outcomes(log))

    again = dag.test()  # nothing new was released: nothing is sent twice
    assert again.state == "success"
    assert stored_outcomes(log) == expected

    headers = {"X-API-Key": KEY}
    report = httpx.get(f"{services['api']}/performance?fresh=true", headers=headers, timeout=30).json()
    (champion,) = report["versions"]
    assert (champion["labelled"], champion["predictions"]) == (300, 340)
    assert 0.5 < champion["realized"]["accuracy"] <= 1.0


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_concept_drift_breaks_live_quality_and_the_quality_asset_starts_training(
    airflow_db: Path, services: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Customers who look the same now churn for other reasons: the champion ranks them wrongly, its
    # live ROC AUC falls below its holdout figure. The policy's cooldown starts empty for this model.
    point_the_dag_at(services, services["project"], monkeypatch)
    httpx.put(f"{services['source']}/world", json={"concept": 1.0}, timeout=10)
    score_customers(services, 600, 3)
    wait_logged(Path(services["log"]), 600)

    run = load_dag().test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"collect": "success", "judge": "success", "degraded": "success", "emit": "success"}
    [event] = asset_events("ground_truth", run.run_id)
    assert event.extra["labelled"] == 600
    assert any(b.startswith("roc_auc=") and "holdout" in b for b in event.extra["breaches"])
    assert starts_training(event)  # the training DAG is scheduled on this asset
    # Within the cooldown, the next breach starts nothing.
    again = load_dag().test()
    assert {ti.task_id: ti.state for ti in again.get_task_instances()}["emit"] == "skipped"


def ground_truth_command(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(PROJECT), "ground-truth"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        timeout=120,
    )


def test_without_a_data_source_there_is_nothing_to_collect(tmp_path: Path) -> None:
    done = ground_truth_command(
        {"BITLOOP_DATA_SOURCE_URL": "", "BITLOOP_PREDICTION_LOG_URL": str(tmp_path / "l")}
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "skipped"


def test_an_unreachable_data_source_fails_with_the_setting_to_check(tmp_path: Path) -> None:
    log = tmp_path / "predictions.sqlite"
    from core.predictions.access import insert_rows
    from core.predictions.rows import Row

    insert_rows(
        log, [Row(time.time(), "r", "bitloop-churn", "1", "champion", {}, 0, None, 0, "L1-1-1-0-0-0")]
    )
    done = ground_truth_command(
        {"BITLOOP_DATA_SOURCE_URL": f"http://127.0.0.1:{free_port()}", "BITLOOP_PREDICTION_LOG_URL": str(log)}
    )
    assert done.returncode == 1, done.stderr
    assert "not reachable" in done.stderr
    assert "check BITLOOP_DATA_SOURCE_URL" in done.stderr
    assert done.stdout == ""

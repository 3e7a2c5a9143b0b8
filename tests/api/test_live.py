"""The model server under uvicorn: swaps under load, registry outages and broken versions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from core.predictions.access import count_rows
from tests.api.conftest import Trained, api_server, sample_record, train_model
from tests.api.traffic import Traffic, wait_for
from tests.servers import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_promotion_under_load_drops_nothing_and_logs_every_answer(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    trained = train_model(tmp_path / "ws", mlflow_uri, "live-churn")
    client = MlflowClient(mlflow_uri)
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'live-churn'"))
    target = str(next(v for v in versions if str(v) != trained.version))
    with api_server(tmp_path, mlflow_uri, "live-churn") as base:
        with Traffic(base, sample_record(trained.schema)) as traffic:
            wait_for(lambda: len(traffic.answers) > 150)
            client.set_registered_model_alias("live-churn", "champion", target)
            wait_for(lambda: any(v == target for _, v in traffic.answers[-20:]))
            count = len(traffic.answers)
            wait_for(lambda: len(traffic.answers) > count + 150)
        answers = list(traffic.answers)
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
        seen = [v for _, v in answers]
        switch = seen.index(target)
        assert set(seen[:switch]) == {trained.version}
        after = seen[switch:]
        assert len(after) > 150
        assert set(after) == {trained.version, target} or set(after) == {target}
        # Each of the other three clients may have had one request in flight when the swap came.
        assert after.count(trained.version) <= 3, after[:20]
        metrics = httpx.get(f"{base}/metrics").text
        assert (
            'bitloop_model_reloads_total{model="live-churn",result="success",variant="champion"} 2.0'
            in metrics
        )
    assert count_rows(tmp_path / "predictions.sqlite") == len(answers)


def test_broken_or_incompatible_versions_are_refused(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained, diabetes_model: Trained
) -> None:
    trained = train_model(tmp_path / "ws", mlflow_uri, "guarded-api")
    client = MlflowClient(mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)

    class NotSklearn(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=NotSklearn(), pip_requirements=["mlflow"])
    broken = mlflow.register_model(info.model_uri, "guarded-api").version
    diabetes_version = client.get_model_version_by_alias(diabetes_model.name, "champion")
    incompatible = mlflow.register_model(
        f"models:/{diabetes_model.name}/{diabetes_version.version}", "guarded-api"
    ).version
    with api_server(tmp_path, mlflow_uri, "guarded-api") as base:
        record = sample_record(trained.schema)
        for bad, failures in ((broken, 1), (incompatible, 2)):
            client.set_registered_model_alias("guarded-api", "champion", str(bad))
            wait_for(
                lambda n=failures: (
                    'bitloop_model_reloads_total{model="guarded-api",result="failure",variant="champion"} '
                    f"{n}.0" in httpx.get(f"{base}/metrics").text
                )
            )
            answer = httpx.post(f"{base}/predict", json=record)
            assert answer.status_code == 200
            assert answer.json()["model_version"] == trained.version
        ready = httpx.get(f"{base}/ready").json()
        assert ready["ready"] is True
        assert "different task or feature set" in ready["detail"]


@pytest.mark.e2e
def test_registry_outage_changes_nothing_for_clients_and_its_report_clears(tmp_path: Path) -> None:
    tracking = mlflow_server(tmp_path / "own-mlflow")
    uri = tracking.__enter__()
    running = True
    try:
        trained = train_model(tmp_path / "ws", uri, "outage-churn")
        with api_server(tmp_path, uri, "outage-churn") as base:
            record = sample_record(trained.schema)
            assert httpx.post(f"{base}/predict", json=record).status_code == 200
            assert httpx.get(f"{base}/ready").json()["detail"] == "serving"
            tracking.__exit__(None, None, None)
            running = False
            time.sleep(2.0)  # several registry checks fail meanwhile
            for _ in range(20):
                answer = httpx.post(f"{base}/predict", json=record)
                assert answer.status_code == 200
                assert answer.json()["model_version"] == trained.version
            ready = httpx.get(f"{base}/ready").json()
            assert ready["ready"] is True
            assert "the registry has been unreachable since" in ready["detail"]
            reload = httpx.post(f"{base}/admin/reload").json()
            assert reload["changed"] is False
            assert "registry unreachable" in reload["detail"]
            tracking = mlflow_server(tmp_path / "own-mlflow", port=int(uri.rsplit(":", 1)[1]))
            tracking.__enter__()
            running = True
            wait_for(lambda: httpx.get(f"{base}/ready").json()["detail"] == "serving")
    finally:
        if running:
            tracking.__exit__(None, None, None)


def test_the_server_follows_a_rollback_at_its_next_alias_check(tmp_path: Path, mlflow_uri: str) -> None:
    """`python -m pipeline rollback` under load, with the default 10 s check: no request fails."""
    from core.settings import PipelineSettings
    from pipeline.stages.promote import rollback

    trained = train_model(tmp_path / "ws", mlflow_uri, "rollback-churn")
    client = MlflowClient(mlflow_uri)
    versions = sorted(int(v.version) for v in client.search_model_versions("name = 'rollback-churn'"))
    previous = str(next(v for v in versions if str(v) != trained.version))
    client.set_registered_model_alias("rollback-churn", "previous", previous)
    env = {"BITLOOP_API_RELOAD_INTERVAL_SECONDS": "10"}
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    server = api_server(tmp_path, mlflow_uri, "rollback-churn", **env)
    with server as base, Traffic(base, sample_record(trained.schema)) as traffic:
        wait_for(lambda: len(traffic.answers) > 50)
        outcome = rollback("rollback-churn", settings)
        rolled_back = time.monotonic()
        wait_for(lambda: traffic.answers[-1] == (200, previous), timeout=20)
        followed_in = time.monotonic() - rolled_back
    assert outcome == {"champion": previous, "demoted": trained.version}
    assert [a for a in traffic.answers if a[0] != 200] == []
    assert followed_in < 12  # the next check (at most 10 s away) plus loading the version
    demoted = client.get_model_version("rollback-churn", trained.version)
    assert demoted.tags["bitloop.decision"] == "rolled_back"

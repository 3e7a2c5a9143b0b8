"""Prometheus, its rules and the Grafana dashboards, checked against real servers.

promtool checks the configs and runs the alert unit tests. Then a real Prometheus scrapes a
real model server (under a bounded load), MLflow, a Pushgateway holding DAG outcomes and the
process exporter; every query of every dashboard panel must return data and every alert
expression must evaluate.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from core.rollout import Terms, start
from ops.local.stack import render_prometheus_config
from pipeline.data.sources.simulated import ID_COLUMN, TARGET, simulate_churn
from tests.api.conftest import Trained, sample_record, train_model
from tests.factories import DIABETES, PROJECT
from tests.servers import free_port, serve
from tests.tools import require

PROMETHEUS_DIR = PROJECT / "ops" / "prometheus"
DASHBOARDS = sorted((PROJECT / "ops" / "grafana" / "dashboards").glob("*.json"))
BINARIES = ("prometheus", "promtool", "prometheus-pushgateway", "prometheus-process-exporter")
# What Grafana substitutes for its built-in and dashboard variables ("All" is ".*").
VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$route": ".*",
    "$feature": ".*",
    "$model": ".*",
}


def require_binaries() -> None:
    require(
        *BINARIES,
        install="apt-get install prometheus prometheus-pushgateway prometheus-process-exporter",
    )


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, cwd=PROMETHEUS_DIR
    )


def local_config(ports: dict[str, int]) -> str:
    return render_prometheus_config(
        {"BITLOOP_PROJECT_DIR": str(PROJECT), **{k: str(v) for k, v in ports.items()}}
    )


def test_alert_rules_pass_their_unit_tests() -> None:
    require_binaries()
    checked = promtool("check", "rules", "rules/bitloop.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "tests/bitloop.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules" / "bitloop.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load((PROMETHEUS_DIR / "tests" / "bitloop.test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    required = {
        "BitloopApiDown",
        "BitloopApiHighErrorRatio",
        "BitloopApiHighLatency",
        "BitloopNoChampion",
        "BitloopModelFailing",
        "BitloopPredictionLogDegraded",
        "BitloopPredictionLogDroppingRows",
        "BitloopModelReloadFailures",
        "BitloopDatasetDrift",
        "BitloopTrainingDagFailing",
    }
    assert required <= alerts
    assert firing == alerts, alerts - firing
    assert quiet == alerts, alerts - quiet


def test_local_scrape_config_is_valid(tmp_path: Path) -> None:
    require_binaries()
    config = tmp_path / "prometheus.yml"
    ports = {
        name: 9000 + i
        for i, name in enumerate(
            (
                "BITLOOP_API_PORT",
                "BITLOOP_MLFLOW_PORT",
                "BITLOOP_PUSHGATEWAY_PORT",
                "BITLOOP_PROCESS_EXPORTER_PORT",
                "BITLOOP_PROMETHEUS_PORT",
            )
        )
    }
    config.write_text(local_config(ports))
    checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


def test_compose_scrape_config_is_valid(tmp_path: Path) -> None:
    require_binaries()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.compose.yml").read_text())
    # The rules live at /etc/prometheus/rules in the container; check them from here.
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # MLflow's /metrics needs its admin login, read from the compose secret's file.
    assert jobs["mlflow"]["basic_auth"]["password_file"] == "/run/secrets/mlflow_admin_password"
    jobs["mlflow"]["basic_auth"]["password_file"] = str(tmp_path / "mlflow_admin_password")
    (tmp_path / "mlflow_admin_password").write_text("test-only")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {"bitloop-api", "mlflow", "pushgateway", "node-exporter", "cadvisor", "prometheus"} <= set(jobs)


def test_dashboards_select_their_datasource_through_a_variable() -> None:
    assert {p.stem for p in DASHBOARDS} == {"service", "model"}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        uids = re.findall(r'"uid": "([^"]*)"', path.read_text())
        assert set(uids) <= {"${datasource}", "-- Grafana --", board["uid"]}, path
        for panel in panels(board):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield from (p for p in [panel, *panel.get("panels", [])] if p["type"] != "row")


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr.replace("$1", ""), f"unsubstituted variable in {expr}"
    return expr


class Load:
    """Bounded traffic of every kind the dashboards show: calm and drifted rows, bad input, reads."""

    def __init__(self, base: str, trained: Trained, seconds: float, regression: tuple[str, Trained]) -> None:
        self.base, self.trained, self.seconds = base, trained, seconds
        self.regression = regression
        world = simulate_churn(1500, 31, 1.0)
        frame = world.drop(columns=[ID_COLUMN, TARGET])
        self.drifted = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        self.outcomes = world[TARGET].tolist()
        """The drifted customers' true churn, sent to /feedback after each batch."""
        self.unexpected: list[str] = []
        """Answers other than the expected ones; asserted on in the test (a thread's assert is lost)."""
        self.predicted: list[float] = []
        """Every value the regressor answered."""

    def _expect(self, response: httpx.Response, status: int) -> None:
        if response.status_code != status:
            path = response.request.url.path
            self.unexpected.append(f"{path}: {response.status_code} {response.text[:200]}")

    def run(self) -> None:
        threads = [threading.Thread(target=self._singles) for _ in range(3)] + [
            threading.Thread(target=self._batches),
            threading.Thread(target=self._regression),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _singles(self) -> None:
        deadline = time.monotonic() + self.seconds
        record = sample_record(self.trained.schema)
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while time.monotonic() < deadline:
                self._expect(client.post("/predict", json=record), 200)
                self._expect(client.post("/predict", json={**record, "age": "old"}), 422)
                for path in ("/model", "/ready", "/health"):
                    client.get(path)

    def _regression(self) -> None:
        """The regressor's holdout rows, in turn: known predictions for the quantile panels."""
        base, trained = self.regression
        deadline = time.monotonic() + self.seconds
        holdout = pd.read_parquet(trained.workspace.test_file)[trained.schema.feature_names]
        records = holdout.astype(object).where(holdout.notna(), None).to_dict(orient="records")
        with httpx.Client(base_url=base, timeout=10) as client:
            for record in itertools.cycle(records):
                if time.monotonic() >= deadline:
                    break
                answer = client.post("/predict", json=record)
                self._expect(answer, 200)
                if answer.status_code == 200:
                    self.predicted.append(answer.json()["prediction"])
                time.sleep(0.02)

    def _batches(self) -> None:
        deadline = time.monotonic() + self.seconds
        with httpx.Client(base_url=self.base, timeout=30) as client:
            start = 0
            while time.monotonic() < deadline:
                answer = client.post("/predict/batch", json={"records": self.drifted[start : start + 250]})
                self._expect(answer, 200)
                if answer.status_code == 200:
                    request_id, truth = answer.json()["request_id"], self.outcomes[start : start + 250]
                    sent = [{"request_id": request_id, "row": i, "outcome": o} for i, o in enumerate(truth)]
                    time.sleep(0.3)  # the log writes the answered rows first (flush interval)
                    self._expect(client.post("/feedback", json={"outcomes": sent}), 200)
                    client.get("/performance")
                start = (start + 250) % len(self.drifted)
                client.get("/drift")
                time.sleep(0.5)


def query(base: str, expr: str) -> dict[str, Any]:
    answer = httpx.post(f"{base}/api/v1/query", data={"query": expr}, timeout=10)
    body: dict[str, Any] = answer.json()
    return body


def wait_for_series(base: str, expr: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not query(base, expr).get("data", {}).get("result"):
        assert time.monotonic() < deadline, f"Prometheus never had data for {expr}"
        time.sleep(1)


@pytest.mark.integration
@pytest.mark.slow
def test_every_panel_query_and_alert_expression_works_against_a_real_prometheus(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binaries()
    trained = train_model(tmp_path / "project", mlflow_uri, "monitored-churn")
    regression = train_model(tmp_path / "regression", mlflow_uri, "monitored-diabetes", data=DIABETES)
    # A rollout under way, so that the rollout panels have both sides to draw.
    registry = MlflowClient(mlflow_uri)
    other = next(
        str(v.version)
        for v in registry.search_model_versions(f"name = '{trained.name}'")
        if str(v.version) != trained.version
    )
    start(registry, trained.name, other, trained.version, Terms(0.3, 10**6, 60.0))
    ports = {name: free_port() for name in ("api", "api2", "pushgateway", "exporter", "prometheus")}
    api = f"http://127.0.0.1:{ports['api']}"
    api2 = f"http://127.0.0.1:{ports['api2']}"
    prometheus = f"http://127.0.0.1:{ports['prometheus']}"
    pushgateway = f"127.0.0.1:{ports['pushgateway']}"
    with ExitStack() as stack:
        stack.enter_context(
            serve(
                ["prometheus-pushgateway", f"--web.listen-address={pushgateway}"],
                f"http://{pushgateway}/-/ready",
                tmp_path / "pushgateway",
            )
        )
        stack.enter_context(
            serve(
                [
                    "prometheus-process-exporter",
                    "-config.path",
                    str(PROMETHEUS_DIR / "process-exporter.yml"),
                    "-web.listen-address",
                    f"127.0.0.1:{ports['exporter']}",
                    "-threads=false",
                ],
                f"http://127.0.0.1:{ports['exporter']}/metrics",
                tmp_path / "exporter",
            )
        )
        for model, port in ((trained, "api"), (regression, "api2")):  # a classifier and a regressor
            stack.enter_context(
                serve(
                    [sys.executable, "-m", "api"],
                    f"http://127.0.0.1:{ports[port]}/health",
                    tmp_path / port,
                    {
                        "MLFLOW_TRACKING_URI": mlflow_uri,
                        "BITLOOP_API_MODEL_NAME": model.name,
                        "BITLOOP_API_PORT": str(ports[port]),
                        "BITLOOP_PREDICTION_LOG_URL": str(tmp_path / f"{port}.sqlite"),
                        "BITLOOP_API_DRIFT_INTERVAL_SECONDS": "1",
                        "BITLOOP_API_QUALITY_INTERVAL_SECONDS": "1",
                    },
                    timeout=60,
                )
            )
        config = yaml.safe_load(
            local_config(
                {
                    "BITLOOP_API_PORT": ports["api"],
                    "BITLOOP_MLFLOW_PORT": int(mlflow_uri.rsplit(":", 1)[1]),
                    "BITLOOP_PUSHGATEWAY_PORT": ports["pushgateway"],
                    "BITLOOP_PROCESS_EXPORTER_PORT": ports["exporter"],
                    "BITLOOP_PROMETHEUS_PORT": ports["prometheus"],
                }
            )
        )
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        api_job = next(job for job in config["scrape_configs"] if job["job_name"] == "bitloop-api")
        api_job["static_configs"][0]["targets"].append(f"127.0.0.1:{ports['api2']}")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        stack.enter_context(
            serve(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                ],
                f"{prometheus}/-/ready",
                tmp_path / "prometheus",
            )
        )
        # The DAGs' callbacks, as Airflow calls them, push run outcomes to the Pushgateway.
        monkeypatch.syspath_prepend(str(PROJECT / "dags"))
        import bitloop_stages

        monkeypatch.setenv("BITLOOP_PUSHGATEWAY_URL", pushgateway)
        bitloop_stages.record_failure({"ti": SimpleNamespace(dag_id="training", task_id="validate")})
        bitloop_stages.record_success({"ti": SimpleNamespace(dag_id="training", task_id="summary")})
        bitloop_stages.record_success({"ti": SimpleNamespace(dag_id="drift_monitor", task_id="detect")})

        load = Load(api, trained, seconds=8, regression=(api2, regression))
        load.run()
        assert load.unexpected == []
        wait_for_series(prometheus, "bitloop_drift_score")
        wait_for_series(prometheus, 'bitloop_http_requests_total{route="/predict/batch"}')
        wait_for_series(prometheus, "bitloop_dag_last_success_timestamp_seconds")
        time.sleep(3)  # a few more scrapes, so every rate() window holds several samples

        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"] * 6, targets
        assert {t["labels"]["job"] for t in targets} == {
            "bitloop-api",
            "mlflow",
            "pushgateway",
            "process-exporter",
            "prometheus",
        }

        empty = []
        for path in DASHBOARDS:
            for panel in panels(json.loads(path.read_text())):
                for target in panel["targets"]:
                    answer = query(prometheus, substitute(target["expr"]))
                    assert answer["status"] == "success", (panel["title"], answer)
                    values = [float(r["value"][1]) for r in answer["data"]["result"]]
                    if not any(math.isfinite(v) for v in values):  # NaN is "No data" in Grafana too
                        empty.append(f"{path.stem}: {panel['title']} [{target['refId']}]")
        assert empty == [], "panels without data:\n" + "\n".join(empty)

        # The predicted-value panel shows the quantiles of what the regressor answered, within one
        # bucket (5% of the training target's range; 25-346 for this data).
        span = json.loads(regression.workspace.profile_file.read_text())["target"]
        bucket = 0.05 * (span["max"] - span["min"])
        assert span["max"] - span["min"] > 100
        board = json.loads((PROJECT / "ops" / "grafana" / "dashboards" / "model.json").read_text())
        panel = next(p for p in panels(board) if p["title"] == "Predicted value (regression models)")
        known = statistics.quantiles(load.predicted, n=10)
        assert len(load.predicted) > 50
        for target, expected in zip(
            panel["targets"], (statistics.median(load.predicted), known[8]), strict=True
        ):
            result = query(prometheus, substitute(target["expr"]))["data"]["result"]
            shown = {r["metric"]["model"]: float(r["value"][1]) for r in result}
            assert abs(shown[regression.name] - expected) <= bucket, (target["refId"], shown, expected)

        groups = yaml.safe_load((PROMETHEUS_DIR / "rules" / "bitloop.yml").read_text())["groups"]
        for rule in (r for g in groups for r in g["rules"]):
            answer = query(prometheus, rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)
        loaded = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {r["name"]: (r["health"], r.get("lastError")) for g in loaded for r in g["rules"]}
        assert len(health) == sum(len(g["rules"]) for g in groups)
        assert all(state == "ok" and not error for state, error in health.values()), health
        # The training DAG failed before its last success: no alert. The drift alert is pending.
        alerts = {
            a["metric"]["alertname"]: a["metric"]["alertstate"]
            for a in query(prometheus, "ALERTS")["data"]["result"]
        }
        assert "BitloopTrainingDagFailing" not in alerts
        assert "BitloopApiDown" not in alerts
        assert alerts.get("BitloopDatasetDrift") == "pending"

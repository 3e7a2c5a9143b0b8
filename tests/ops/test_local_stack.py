"""The local stack's Airflow plumbing, without starting the stack (that is `make test-stack`)."""

from __future__ import annotations

import configparser
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ops.local.airflow_api import airflow_client, trigger_dag, wait_dag_run
from ops.local.settings import StackSettings, configuration_changes, record_configuration
from ops.local.stack import _environment, print_urls
from tests.factories import PROJECT
from tests.servers import free_port


def test_airflow_waits_a_minute_for_the_sqlite_write_lock(tmp_path: Path) -> None:
    # Airflow's five processes write one SQLite file; pysqlite gives up on a held lock after 5 s
    # and the API turns that into a 500 for whoever triggered a run.
    env = _environment(StackSettings(state_dir=tmp_path))
    probe = (
        "from airflow import settings\n"
        "settings.configure_orm()\n"
        "with settings.engine.connect() as c:\n"
        "    print(c.exec_driver_sql('PRAGMA busy_timeout').scalar())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "60000"


def test_airflow_tasks_call_an_api_server_apart_from_the_rest_api() -> None:
    # One process serving both deadlocks on SQLite: the REST API's audit log waits for the lock on
    # the event loop that a task's open write needs to commit.
    config = configparser.ConfigParser(interpolation=None)
    config.read(PROJECT / "ops" / "supervisor" / "supervisord.conf")
    servers = {
        name.removeprefix("program:"): section["command"]
        for name, section in config.items()
        if "api-server" in section.get("command", "")
    }
    assert servers == {
        "airflow-api": "%(ENV_BITLOOP_BIN)s/airflow api-server --apps core",
        "airflow-execution": "%(ENV_BITLOOP_BIN)s/airflow api-server --apps execution "
        "--port %(ENV_BITLOOP_AIRFLOW_EXECUTION_PORT)s",
    }
    assert "airflow-execution" in config["group:bitloop"]["programs"].split(",")
    shared = config["supervisord"]["environment"]
    assert (
        'AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:%(ENV_BITLOOP_AIRFLOW_EXECUTION_PORT)s/execution/"'
        in shared
    )


def _airflow(answers: list[int], posted: list[dict[str, object]]) -> httpx.Client:
    """Airflow's REST API answering each trigger with the next status in `answers`."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"dag_id": "training"})
        posted.append(json.loads(request.content))
        status = answers.pop(0)
        return httpx.Response(
            status, json={"dag_run_id": posted[-1]["dag_run_id"], "detail": "database is locked"}
        )

    return httpx.Client(base_url="http://airflow.invalid", transport=httpx.MockTransport(handle))


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _: None)


def test_a_trigger_retries_a_server_error_under_the_same_run_name() -> None:
    posted: list[dict[str, object]] = []
    run_id = trigger_dag(_airflow([500, 200], posted), "training", time.monotonic() + 60)
    assert len(posted) == 2
    assert posted[0]["dag_run_id"] == posted[1]["dag_run_id"] == run_id


def test_a_retry_that_finds_its_run_already_started_takes_it() -> None:
    # The 500 came after the run was committed: the retry's 409 names the same run, not a new one.
    posted: list[dict[str, object]] = []
    run_id = trigger_dag(_airflow([500, 409], posted), "training", time.monotonic() + 60)
    assert run_id == posted[0]["dag_run_id"]


def test_a_first_attempt_conflict_is_an_error_and_repeated_server_errors_stop() -> None:
    with pytest.raises(httpx.HTTPStatusError):
        trigger_dag(_airflow([409], []), "training", time.monotonic() + 60)
    posted: list[dict[str, object]] = []
    with pytest.raises(SystemExit, match="could not start a training run"):
        trigger_dag(_airflow([500, 503, 500], posted), "training", time.monotonic() + 60)
    assert len(posted) == 3


class _CutOffAirflow(http.server.BaseHTTPRequestHandler):
    """Airflow that logs the admin in, then drops the connection of every other request unanswered."""

    def do_POST(self) -> None:
        body = b'{"access_token": "a-token"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_airflow_not_answering_is_one_line_naming_it_not_a_traceback(tmp_path: Path) -> None:
    refused = StackSettings(state_dir=tmp_path, airflow_port=free_port())
    with pytest.raises(SystemExit) as stopped:
        airflow_client(refused, password="admin")
    message = str(stopped.value)
    assert message.startswith(
        f"Airflow did not answer POST http://127.0.0.1:{refused.airflow_port}/auth/token"
    )
    assert "ConnectError" in message
    assert "`make logs` (airflow-api)" in message

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutOffAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = StackSettings(state_dir=tmp_path, airflow_port=server.server_address[1])
        with airflow_client(settings, password="pw-s3cret") as airflow, pytest.raises(SystemExit) as stopped:
            wait_dag_run(airflow, "training", "manual__1", time.monotonic() + 60)
    finally:
        server.shutdown()
        server.server_close()
    assert str(stopped.value).startswith(
        f"Airflow did not answer GET http://127.0.0.1:{settings.airflow_port}/api/v2/dags/training/dagRuns/manual__1"
    )
    assert "RemoteProtocolError" in str(stopped.value)
    assert "s3cret" not in str(stopped.value)
    assert "Bearer" not in str(stopped.value)


def test_the_url_list_is_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    print_urls(StackSettings(state_dir=tmp_path))
    rows = [line for line in capsys.readouterr().out.splitlines() if "http://" in line]
    assert len({line.index("http://") for line in rows}) == 1  # every URL starts in one column
    logins = [line.index("login:") for line in rows if "login:" in line]
    assert len(logins) > 3
    assert len(set(logins)) == 1


def test_a_changed_setting_is_named_and_no_secret_is_kept(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path)
    started = {"BITLOOP_API_API_KEY": "key-one-123", "BITLOOP_API_MODEL_NAME": "a", "HOME": "/root"}
    assert configuration_changes(settings, started) == []  # nothing recorded: nothing running
    record_configuration(settings, started)
    assert configuration_changes(settings, started) == []
    assert configuration_changes(settings, {**started, "HOME": "/tmp"}) == []  # not a service setting
    changed = {**started, "BITLOOP_API_MODEL_NAME": "b", "MLFLOW_TRACKING_URI": "http://x"}
    del changed["BITLOOP_API_API_KEY"]
    assert configuration_changes(settings, changed) == [
        "BITLOOP_API_API_KEY",
        "BITLOOP_API_MODEL_NAME",
        "MLFLOW_TRACKING_URI",
    ]
    assert "key-one-123" not in (tmp_path / "running-configuration.json").read_text()


def test_make_up_hands_the_prediction_log_url_to_the_server_and_the_dags(tmp_path: Path) -> None:
    default = _environment(StackSettings(state_dir=tmp_path))
    assert default["BITLOOP_PREDICTION_LOG_URL"] == str(tmp_path.resolve() / "predictions.sqlite")
    url = "postgresql://predictions@db.example:5432/predictions"
    chosen = _environment(StackSettings(state_dir=tmp_path, prediction_log_url=url))
    assert chosen["BITLOOP_PREDICTION_LOG_URL"] == url
    config = (PROJECT / "ops" / "supervisor" / "supervisord.conf").read_text()
    # Airflow's tasks (the drift monitor) and the model server read the one URL make up was given.
    assert config.count('BITLOOP_PREDICTION_LOG_URL="%(ENV_BITLOOP_PREDICTION_LOG_URL)s"') == 2
    assert "predictions.sqlite" not in config


def test_make_up_stops_on_an_unreachable_prediction_log_naming_the_variable(tmp_path: Path) -> None:
    url = f"postgresql://bitloop:hunter2-secret@127.0.0.1:{free_port()}/predictions"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ops.local.stack", "up"],
        cwd=PROJECT,
        env={
            **os.environ,
            "BITLOOP_STATE_DIR": str(tmp_path),
            "BITLOOP_PREDICTION_LOG_URL": url,
            "STACK": "local",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "BITLOOP_PREDICTION_LOG_URL" in done.stderr
    assert "hunter2-secret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "supervisord.pid").exists()  # nothing was started


def test_make_up_runs_the_training_dag_of_each_model_without_a_champion(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every declared model without a champion gets one run of its own training DAG, all started
    together, the default model's first; one with a champion is left alone; a run that promotes
    nothing stops `make up`, naming the model. (Airflow is replaced by what its DAG run leaves in
    the registry: the stack test runs the real DAG.)"""
    from mlflow import MlflowClient

    import ops.local.champions as champions
    from tests.factories import DIABETES, light_params, make_workspace

    prefix = f"up-{tmp_path.name}"
    declared = {f"{prefix}-trained": {}, f"{prefix}-diabetes": {"data": DIABETES}, f"{prefix}-failing": {}}
    make_workspace(tmp_path, light_params(model={"name": f"{prefix}-churn"}, models=declared))
    monkeypatch.setattr(champions, "PROJECT", tmp_path)
    registry = MlflowClient(mlflow_uri)

    run = registry.create_run(registry.create_experiment(prefix)).info.run_id

    def champion(name: str) -> None:
        registry.create_registered_model(name)
        version = registry.create_model_version(name, f"runs:/{run}/model", run_id=run)
        registry.set_registered_model_alias(name, "champion", version.version)

    champion(f"{prefix}-trained")
    triggered: list[list[str]] = []

    def run_training_dags(settings: StackSettings, dag_ids: list[str], password: str | None) -> list[str]:
        triggered.append(dag_ids)
        for dag_id in dag_ids:
            if not dag_id.endswith("-failing"):
                champion(f"{prefix}-churn" if dag_id == "training" else dag_id.removeprefix("training."))
        return ["run"] * len(dag_ids)

    monkeypatch.setattr(champions, "run_training_dags", run_training_dags)
    settings = StackSettings(state_dir=tmp_path / "state", mlflow_port=int(mlflow_uri.rsplit(":", 1)[1]))
    with pytest.raises(SystemExit, match=f"promoted no candidate of {prefix}-failing: see"):
        champions.ensure_champion(settings)
    # one call: every model without a champion at once, the default model first
    assert triggered == [["training", f"training.{prefix}-diabetes", f"training.{prefix}-failing"]]

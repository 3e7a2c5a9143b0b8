"""Smoke test of the local stack: `make up` from nothing to a champion, then `make down`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from core.params import load_params
from tests.durations import within_stated
from tests.factories import PROJECT
from tests.servers import free_port
from tests.tools import chromium_path, headless_chromium

pytestmark = pytest.mark.stack


def make(
    target: str, env: dict[str, str], timeout: float = 900, project: Path = PROJECT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cmdline_mentions(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _wildcard_listeners(root: int) -> list[tuple[int, str, int]]:
    """Listening TCP sockets on every interface (0.0.0.0 or ::) held by `root` or its descendants:
    (pid, command, port). Read from /proc, as `ss -ltnp` does."""
    wildcard = {}
    for table, any_address in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address == any_address:  # LISTEN
                wildcard[fields[9]] = int(port, 16)  # by inode
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = int(next(x for x in status.read_text().splitlines() if x.startswith("PPid:")).split()[1])
        except (OSError, StopIteration):
            continue
        children.setdefault(parent, []).append(int(status.parent.name))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
                if inode in wildcard:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                    found.append((pid, command, wildcard[inode]))
        except OSError:  # the process ended meanwhile
            continue
    return found


def _targets_up(prometheus: str) -> dict[str, str]:
    return {r["metric"]["job"]: r["value"][1] for r in _query(prometheus, "up")}


def _git_status() -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout


def _dvc_status() -> str:
    dvc = Path(sys.executable).parent / "dvc"
    return subprocess.run([str(dvc), "status"], cwd=PROJECT, capture_output=True, text=True).stdout


# An error or a traceback in any service's log format (not a logger named "uvicorn.error").
ERROR_LINE = re.compile(r'\[error|"level": "(ERROR|CRITICAL)"|\b(ERROR|CRITICAL|Traceback)\b|Error:')


DOCUMENTED_URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/[^\s)`'\"<>,]*)?")


def _documented_urls() -> set[tuple[int, str]]:
    """Every local URL the README and docs/ tell a reader to open (not the ones they POST to)."""
    found = set()
    for doc in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            if re.search(r"-X (POST|PUT|PATCH|DELETE)\b", line):
                continue
            found |= {(int(port), (path or "/").rstrip(".:")) for port, path in DOCUMENTED_URL.findall(line)}
    return found


def _mlflow_in_a_browser(url: str) -> tuple[str, list[str]]:
    """The text MLflow's UI shows at `url`, and each request it made off 127.0.0.1 or with telemetry."""
    with headless_chromium() as browser:
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
        page.goto(url)
        page.wait_for_selector("text=bitloop-churn", timeout=60_000)
        text = page.inner_text("body")
    leaving = [r for r in requests if not r.split()[1].startswith("http://127.0.0.1:")]
    telemetry = [r for r in requests if r.startswith("POST") and "telemetry" in r]
    return text, leaving + telemetry


def _service_errors(state: Path) -> str:
    """The error lines of every service log, so a failure in CI says what went wrong inside."""
    lines = []
    for log in sorted((state / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        errors = [line for line in text if ERROR_LINE.search(line)]
        lines += [f"{log.name}: {line[:400]}" for line in errors[-15:]]
    return "\n".join(lines)


@pytest.mark.timeout(3600)  # make up and both demos, each bounded by its own make() timeout
def test_make_up_serves_a_champion_and_make_down_stops_everything(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(8)]
    mlflow_port, source_port, api_port, airflow_port, execution_port, *monitoring = ports
    prometheus_port, pushgateway_port, exporter_port = monitoring
    env = {
        **os.environ,
        "BITLOOP_STATE_DIR": str(tmp_path / "state"),
        "BITLOOP_MLFLOW_PORT": str(mlflow_port),
        "BITLOOP_DATA_SOURCE_PORT": str(source_port),
        "BITLOOP_API_PORT": str(api_port),
        "BITLOOP_AIRFLOW_PORT": str(airflow_port),
        "BITLOOP_AIRFLOW_EXECUTION_PORT": str(execution_port),
        "BITLOOP_PROMETHEUS_PORT": str(prometheus_port),
        "BITLOOP_PUSHGATEWAY_PORT": str(pushgateway_port),
        "BITLOOP_PROCESS_EXPORTER_PORT": str(exporter_port),
    }
    tracked_before = _git_status()
    try:
        started = time.monotonic()
        up = make("up", env)
        up_seconds = time.monotonic() - started
        monitored = all(
            shutil.which(b) for b in ("prometheus", "prometheus-pushgateway", "prometheus-process-exporter")
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:] + _service_errors(tmp_path / "state")
        # The DAG ran the stages through DVC: its lock describes the run, git's files are untouched.
        assert "Data and pipelines are up to date" in _dvc_status()
        assert _git_status() == tracked_before
        assert f"http://127.0.0.1:{mlflow_port}" in up.stdout
        name = load_params(PROJECT / "params.yaml").model.name
        champion = MlflowClient(f"http://127.0.0.1:{mlflow_port}").get_model_version_by_alias(
            name, "champion"
        )
        assert champion.tags["bitloop.decision"] in {"promoted", "restored"}
        api = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{api}/ready", timeout=5).json()["model_version"] == champion.version
        batch = httpx.get(
            f"http://127.0.0.1:{source_port}/batch",
            params={"n": 1, "seed": 9, "format": "parquet"},
            timeout=10,
        )
        row = pd.read_parquet(io.BytesIO(batch.content)).iloc[0]
        features = [f["name"] for f in httpx.get(f"{api}/model", timeout=5).json()["features"]]
        record = {
            name: (
                None if pd.isna(row[name]) else row[name].item() if hasattr(row[name], "item") else row[name]
            )
            for name in features
        }
        # The MLflow link `make up` prints opens the model-training view on bitloop's experiment,
        # and the UI sends nothing anywhere (telemetry is off on the server).
        mlflow_link = re.search(r"^  mlflow +(\S+)", up.stdout, flags=re.MULTILINE)
        assert mlflow_link
        assert mlflow_link[1].endswith("/#/experiments?workflowType=machine_learning")
        ui = httpx.get(f"http://127.0.0.1:{mlflow_port}/ajax-api/3.0/mlflow/ui-telemetry", timeout=10).json()
        assert ui["disable_ui_telemetry"] is True
        if chromium_path() or os.environ.get("CI"):  # headless_chromium fails under CI without it
            shown, sent = _mlflow_in_a_browser(mlflow_link[1])
            assert "Model registry" in shown  # the model-training sidebar, not the GenAI one
            assert sent == []
        # Every URL the README and docs send a reader to answers on the versions installed here.
        local = {5000: mlflow_port, 8001: source_port, 8000: api_port, 8080: airflow_port}
        local |= {9090: prometheus_port, 9091: pushgateway_port, 9256: exporter_port}
        documented = {(port, path) for port, path in _documented_urls() if port != 3000}  # compose's Grafana
        assert {port for port, _ in documented} <= set(local)
        assert len(documented) >= 10
        answers = {
            (port, path): httpx.get(
                f"http://127.0.0.1:{local[port]}{path}", follow_redirects=True, timeout=30
            )
            for port, path in sorted(documented)
            if port not in (9090, 9091, 9256) or monitored
        }
        assert {url: r.status_code for url, r in answers.items() if r.status_code != 200} == {}
        answer = httpx.post(f"{api}/predict", json=record, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion.version

        airflow = f"http://127.0.0.1:{airflow_port}"
        password = json.loads((tmp_path / "state" / "airflow" / "secrets.json").read_text())["admin_password"]
        assert password != "admin"
        token = httpx.post(
            f"{airflow}/auth/token", json={"username": "admin", "password": password}, timeout=30
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        runs = httpx.get(f"{airflow}/api/v2/dags/training/dagRuns", headers=headers, timeout=30).json()
        assert runs["dag_runs"]
        # Trained exactly once: no scheduled run raced `make up`'s own.
        assert [(r["run_type"], r["state"]) for r in runs["dag_runs"]] == [("manual", "success")]
        assert httpx.post(
            f"{airflow}/auth/token", json={"username": "admin", "password": "admin"}, timeout=30
        ).status_code in (401, 403)

        if monitored:
            prometheus = f"http://127.0.0.1:{prometheus_port}"
            jobs = {"bitloop-api", "mlflow", "pushgateway", "process-exporter", "prometheus"}
            deadline = time.monotonic() + 60
            while _targets_up(prometheus) != dict.fromkeys(jobs, "1"):
                assert time.monotonic() < deadline, f"targets not all up: {_targets_up(prometheus)}"
                time.sleep(2)
        else:
            # With CI set the Prometheus tools must be there: a machine without them proves nothing here.
            assert not os.environ.get("CI"), (
                "CI is set but prometheus, its Pushgateway or exporter is missing"
            )
            assert "skipped: no `prometheus" in up.stdout
        assert re.search(r"^  grafana +skipped:", up.stdout, flags=re.MULTILINE)

        # The closed loop: drifted traffic -> drift_monitor -> drift asset -> training -> new champion.
        started = time.monotonic()
        demo = make("drift-demo", env, timeout=1500)
        demo_seconds = time.monotonic() - started
        assert demo.returncode == 0, (
            demo.stdout[-4000:] + demo.stderr[-3000:] + _service_errors(tmp_path / "state")
        )
        assert "drift_monitor found dataset drift" in demo.stdout
        # It converges: quiet after at most retrain.window_batches retrains.
        converged = re.search(
            r"converged: drift_monitor is quiet against version \d+ after (\d+) retrain", demo.stdout
        )
        assert converged, demo.stdout[-3000:]
        assert 1 <= int(converged[1]) <= (load_params(PROJECT / "params.yaml").retrain.window_batches or 1)
        new = MlflowClient(f"http://127.0.0.1:{mlflow_port}").get_model_version_by_alias(name, "champion")
        assert int(new.version) > int(champion.version)
        assert httpx.get(f"{api}/ready", timeout=5).json()["model_version"] == new.version
        print(demo.stdout)  # the drift scores and timings, for the CI log

        # Concept drift: inputs stay, the relation turns; live quality, not drift, calls for training.
        started = time.monotonic()
        concept = make("concept-demo", env, timeout=1500)
        concept_seconds = time.monotonic() - started
        assert concept.returncode == 0, (
            concept.stdout[-4000:] + concept.stderr[-3000:] + _service_errors(tmp_path / "state")
        )
        print(concept.stdout)
        assert re.findall(r"drift window: (\w+)", concept.stdout)[0] == "no_drift"
        assert re.search(r"breach: roc_auc=[\d.]+ is below the holdout figure", concept.stdout)
        restored = re.search(
            r"restored: version \d+'s live quality holds after (\d+) retrain", concept.stdout
        )
        assert restored, concept.stdout[-3000:]
        assert 1 <= int(restored[1]) <= (load_params(PROJECT / "params.yaml").retrain.window_batches or 1)
        after_drift, new = (
            new,
            MlflowClient(f"http://127.0.0.1:{mlflow_port}").get_model_version_by_alias(name, "champion"),
        )
        assert int(new.version) > int(after_drift.version)
        assert httpx.get(f"{api}/ready", timeout=5).json()["model_version"] == new.version

        # The durations the README states hold here, with room for a slower machine.
        print(
            f"make up: {up_seconds:.0f} s, drift-demo: {demo_seconds:.0f} s, "
            f"concept-demo: {concept_seconds:.0f} s"
        )
        timed = (
            ("make up", up_seconds),
            ("make drift-demo", demo_seconds),
            ("make concept-demo", concept_seconds),
        )
        for command, seconds in timed:
            problem = within_stated(command, seconds)
            assert problem is None, problem
        if monitored:
            served = f'bitloop_model_version{{variant="champion"}} == {new.version}'
            pushed = 'bitloop_dag_last_success_timestamp_seconds{dag_id="training"}'
            deadline = time.monotonic() + 60
            while not (_query(prometheus, served) and _query(prometheus, pushed)):
                assert time.monotonic() < deadline, "Prometheus never saw the new champion or the DAG outcome"
                time.sleep(2)

        assert "Data and pipelines are up to date" in _dvc_status()  # the drift-triggered run too
        assert _git_status() == tracked_before
        # No Airflow process waited out the SQLite lock (the REST API and the tasks' execution API
        # did, deadlocked, while one process served both).
        locked = [
            f"{log.name}: {line[:300]}"
            for log in sorted((tmp_path / "state" / "logs").glob("airflow-*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if "database is locked" in line
        ]
        assert locked == []

        again = make("up", env, timeout=120)
        assert again.returncode == 0
        assert "training DAG" not in again.stdout  # a second `make up` only re-prints the URLs
        # Another setting is never silently ignored: `make up` names it and how to apply it.
        changed = make("up", {**env, "BITLOOP_API_CHALLENGER_SHARE": "0.5"}, timeout=120)
        assert changed.returncode != 0
        assert "changed since: BITLOOP_API_CHALLENGER_SHARE." in changed.stderr
        assert "make down && make up" in changed.stderr
        assert make("status", env).returncode == 0
        supervisor = int((tmp_path / "state" / "supervisord.pid").read_text())
        assert _wildcard_listeners(supervisor) == []  # every service binds 127.0.0.1 only
    finally:
        pid_file = tmp_path / "state" / "supervisord.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        down = make("down", env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    survivors = [p for p in Path("/proc").glob("[0-9]*") if _cmdline_mentions(p, str(tmp_path))]
    assert survivors == []
    for port in ports:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_make_up_refuses_a_busy_port_at_once(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "BITLOOP_STATE_DIR": str(tmp_path / "state"),
            "BITLOOP_MLFLOW_PORT": str(port),
            "BITLOOP_DATA_SOURCE_PORT": str(free_port()),
            "BITLOOP_API_PORT": str(free_port()),
            "BITLOOP_AIRFLOW_PORT": str(free_port()),
            "BITLOOP_AIRFLOW_EXECUTION_PORT": str(free_port()),
            "BITLOOP_PROMETHEUS_PORT": str(free_port()),
            "BITLOOP_PUSHGATEWAY_PORT": str(free_port()),
            "BITLOOP_PROCESS_EXPORTER_PORT": str(free_port()),
        }
        result = make("up", env, timeout=120)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "BITLOOP_MLFLOW_PORT" in result.stderr
    assert not (tmp_path / "state" / "supervisord.pid").exists()


def test_stack_choice_is_checked_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "BITLOOP_STATE_DIR": str(tmp_path / "state")}
    bogus = make("up", {**env, "STACK": "kubernetes"}, timeout=120)
    assert bogus.returncode != 0
    assert "STACK must be `compose` or `local`" in bogus.stderr
    engine = (
        shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )
    if not engine:
        compose = make("up", {**env, "STACK": "compose"}, timeout=120)
        assert compose.returncode != 0
        assert "no Docker engine answers" in compose.stderr
    assert not (tmp_path / "state" / "supervisord.pid").exists()

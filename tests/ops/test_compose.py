"""The containerised stack end to end (`make test-compose`): build, compose up, smoke test, tear down.

Our images are built with podman from a local base image; the third-party images no registry
here can supply are replaced by ops/compose/test.override.yml (Debian-built PostgreSQL and
Prometheus tools; Grafana and cAdvisor left out). docker-compose (or Compose v2) drives podman
through its Docker-compatible API; podman has no systemd here, so the test runs the healthchecks
itself.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.local.stack import write_compose_secrets
from tests.factories import PROJECT
from tests.servers import free_port
from tests.tools import compose_client, require

pytestmark = pytest.mark.compose

BASE = "localhost/bitloop-base:bookworm"
OURS = ("api", "datasource", "mlflow", "pipeline")
TEST_IMAGES = ("postgres", "prometheus", "haproxy")
SERVICES = [
    "postgres",
    "mlflow",
    "datasource",
    "api",
    "lb",
    "airflow-init",
    "airflow-api",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "pushgateway",
    "prometheus",
    "node-exporter",
]
PROJECT_NAME = "bitloop-test"


def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_images() -> dict[str, int]:
    """Build every image of ours and the test stand-ins; returns our images' sizes in MB."""
    run("bash", str(PROJECT / "ops" / "compose" / "base-image.sh"), BASE)
    ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    env = {**os.environ, "ENGINE": "podman", "BUILDER": "dockerfile", "BASE_IMAGE": BASE, "SSL_CERT_FILE": ca}
    run("bash", str(PROJECT / "ops" / "docker" / "build.sh"), env=env)
    for target in TEST_IMAGES:
        run(
            "podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE}",
            "-f", "ops/compose/Dockerfile.debian", "--target", target,
            "-t", f"bitloop-test-{target}:latest", ".",
            cwd=PROJECT,
        )  # fmt: skip
    sizes = {}
    for target in OURS:
        size = run("podman", "image", "inspect", "--format", "{{.Size}}", f"bitloop-{target}:latest").stdout
        sizes[target] = round(int(size.strip()) / 1e6)
    return sizes


class Healthchecks:
    """podman schedules healthchecks through systemd; without it, run them every few seconds."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Healthchecks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(3):
            names = subprocess.run(
                [
                    "podman",
                    "ps",
                    "--filter",
                    f"label=com.docker.compose.project={PROJECT_NAME}",
                    "--format",
                    "{{.Names}}",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            for name in names:
                subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, check=False)


def containers(service: str) -> list[str]:
    return run(
        "podman", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).stdout.split()  # fmt: skip


def replica_predictions(container: str) -> float:
    """The /predict answers a replica counted, read from inside its container."""
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    exposition = run("podman", "exec", container, "python3", "-c", script).stdout
    return sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith("bitloop_http_requests_total{")
        and 'route="/predict"' in line
        and 'status="200"' in line
    )


class Load:
    """One client sending predictions through the load balancer until stopped; statuses are kept."""

    def __init__(self, api: str, record: dict[str, Any]) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api, record))

    def _run(self, api: str, record: dict[str, Any]) -> None:
        with httpx.Client(base_url=api, timeout=30) as client:
            while not self._stop.is_set() and len(self.statuses) < 20_000:
                try:
                    self.statuses.append(client.post("/predict", json=record).status_code)
                except httpx.HTTPError:
                    self.statuses.append(-1)
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def check_replicas_behind_the_balancer(api: str, record: dict[str, Any], logged_rows: Any) -> int:
    """Requests reach both replicas; one stopped (SIGTERM) and one killed (SIGKILL) under load, then
    started again, fail none of them; the log then holds one row per answer."""
    replicas = containers("api")
    assert len(replicas) == 2, replicas
    with httpx.Client(base_url=api, timeout=30) as client:
        for _ in range(20):
            assert client.post("/predict", json=record).status_code == 200
    assert all(replica_predictions(r) > 0 for r in replicas)  # leastconn spread them
    before = logged_rows()
    with Load(api, record) as load:
        for replica, signal in zip(replicas, ("TERM", "KILL"), strict=True):
            time.sleep(3)
            if signal == "TERM":
                run("podman", "stop", "-t", "20", replica)
            else:
                run("podman", "kill", "-s", "KILL", replica)
            time.sleep(3)
            run("podman", "start", replica)
            healthy = ["podman", "healthcheck", "run", replica]
            wait_for(
                lambda command=healthy: (
                    subprocess.run(command, capture_output=True, check=False).returncode == 0
                ),
                f"replica {replica} back after SIG{signal}",
                120,
            )
        time.sleep(5)  # both are in rotation again
    answered = load.statuses.count(200)
    assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    # The killed replica's answers not yet written waited in its spill and were written at restart.
    wait_for(lambda: logged_rows() == before + answered, "one logged row per answer", 60)
    return answered


@contextmanager
def podman_service(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(30)


def wait_for(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(3)


@pytest.mark.timeout(2400)
def test_the_compose_stack_serves_a_champion_trained_by_airflow(tmp_path: Path) -> None:
    require("podman", "debootstrap", install="apt-get install podman debootstrap")
    client = compose_client()
    started = time.monotonic()
    sizes = build_images()
    built = time.monotonic()
    # The model server and the data source carry the MLflow client only, never its server (with
    # the full MLflow both were 904 MB on this Debian base).
    assert sizes["api"] < 600, sizes
    assert sizes["datasource"] < 800, sizes
    ports = {
        name: free_port() for name in ("API", "DATA_SOURCE", "MLFLOW", "AIRFLOW", "PROMETHEUS", "GRAFANA")
    }
    secrets_dir = tmp_path / "secrets"
    write_compose_secrets(secrets_dir)
    password = (secrets_dir / "airflow_admin_password").read_text()
    mlflow_login = ("bitloop", (secrets_dir / "mlflow_admin_password").read_text())
    env_file = tmp_path / ".env"
    values = {
        "COMPOSE_PROJECT_NAME": PROJECT_NAME,
        "BITLOOP_SECRETS_DIR": str(secrets_dir),
        "BASE_IMAGE": BASE,
        **{f"BITLOOP_{name}_PORT": str(port) for name, port in ports.items()},
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    with podman_service(tmp_path) as host:
        env = {**os.environ, "DOCKER_HOST": host, "COMPOSE_PROJECT_NAME": PROJECT_NAME}
        compose = [
            *client,
            "--project-directory",
            str(PROJECT),
            "--env-file",
            str(env_file),
            "-f",
            "docker-compose.yml",
            "-f",
            "ops/compose/test.override.yml",
        ]
        try:
            with Healthchecks():
                run(*compose, "up", "-d", "--no-build", "--scale", "api=2", *SERVICES, cwd=PROJECT, env=env)
                api = f"http://127.0.0.1:{ports['API']}"
                mlflow = f"http://127.0.0.1:{ports['MLFLOW']}"
                airflow = f"http://127.0.0.1:{ports['AIRFLOW']}"
                prometheus = f"http://127.0.0.1:{ports['PROMETHEUS']}"
                wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, "the API", 300)
                wait_for(
                    lambda: httpx.get(f"{airflow}/api/v2/monitor/health", timeout=5).status_code == 200,
                    "Airflow",
                    400,
                )
                healthy = time.monotonic()
                token = httpx.post(
                    f"{airflow}/auth/token", json={"username": "admin", "password": password}, timeout=30
                ).json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                wait_for(
                    lambda: (
                        httpx.get(f"{airflow}/api/v2/dags/training", headers=headers, timeout=10).status_code
                        == 200
                    ),
                    "the training DAG",
                    300,
                )
                run_id = httpx.post(
                    f"{airflow}/api/v2/dags/training/dagRuns",
                    json={"logical_date": None},
                    headers=headers,
                    timeout=30,
                ).json()["dag_run_id"]

                def finished(dag: str, run: str) -> str | None:
                    state = httpx.get(
                        f"{airflow}/api/v2/dags/{dag}/dagRuns/{run}", headers=headers, timeout=10
                    ).json()["state"]
                    return state if state in ("success", "failed") else None

                assert (
                    wait_for(lambda: finished("training", run_id), "the training DAG run", 900) == "success"
                )
                alias = f"{mlflow}/api/2.0/mlflow/registered-models/alias"
                query = {"name": "bitloop-churn", "alias": "champion"}
                champion = httpx.get(alias, params=query, auth=mlflow_login, timeout=10).json()
                champion = champion["model_version"]["version"]
                # MLflow wants a login; a user the admin adds reads but cannot move @champion.
                assert httpx.get(alias, params=query, timeout=10).status_code == 401
                move = {**query, "version": champion}
                assert httpx.post(alias, json=move, timeout=10).status_code == 401
                viewer = ("viewer", secrets.token_urlsafe(16))
                created = httpx.post(
                    f"{mlflow}/api/2.0/mlflow/users/create",
                    json={"username": viewer[0], "password": viewer[1]},
                    auth=mlflow_login,
                    timeout=10,
                )
                assert created.status_code == 200, created.text
                assert httpx.get(alias, params=query, auth=viewer, timeout=10).status_code == 200
                assert httpx.post(alias, json=move, auth=viewer, timeout=10).status_code == 403
                httpx.post(f"{api}/admin/reload", timeout=60)
                assert (
                    wait_for(
                        lambda: httpx.get(f"{api}/ready", timeout=5).json()["model_version"], "ready", 120
                    )
                    == champion
                )
                record = {
                    "age": 41, "region": "north", "contract": "month_to_month", "internet_service": "fiber",
                    "payment_method": "electronic_check", "tenure_months": 5, "monthly_charges": 94.5,
                    "total_charges": 472.5, "support_tickets": 3, "num_products": 1,
                }  # fmt: skip
                answer = httpx.post(f"{api}/predict", json=record, timeout=30)
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == champion
                # The answer is logged in PostgreSQL's `predictions` database, which every replica
                # and the drift monitor share.
                database = run(
                    "podman", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}",
                    "--filter", "label=com.docker.compose.service=postgres",
                ).stdout.split()[0]  # fmt: skip

                def psql(query: str) -> str:
                    return run(
                        "podman", "exec", database, "psql", "-U", "postgres", "-d", "predictions",
                        "-tAc", query,
                    ).stdout.strip()  # fmt: skip

                def logged() -> bool:
                    return answer.json()["request_id"] in psql("SELECT request_id FROM predictions").split()

                wait_for(logged, "the answer in the PostgreSQL prediction log", 30)
                balanced = check_replicas_behind_the_balancer(
                    api, record, lambda: int(psql("SELECT COUNT(*) FROM predictions"))
                )
                # The drift monitor reads what both replicas wrote: every champion row of the last hour.
                served = psql(
                    "SELECT COUNT(*) FROM predictions WHERE model_name = 'bitloop-churn' "
                    "AND variant IN ('champion', 'challenger')"
                )
                drift_run = httpx.post(
                    f"{airflow}/api/v2/dags/drift_monitor/dagRuns",
                    json={"logical_date": None},
                    headers=headers,
                    timeout=30,
                ).json()["dag_run_id"]
                assert (
                    wait_for(lambda: finished("drift_monitor", drift_run), "the drift monitor", 300)
                    == "success"
                )
                detected = httpx.get(
                    f"{airflow}/api/v2/dags/drift_monitor/dagRuns/{drift_run}/taskInstances/detect/"
                    "xcomEntries/return_value",
                    headers=headers,
                    timeout=10,
                ).json()["value"]
                detected = json.loads(detected) if isinstance(detected, str) else detected
                assert detected["rows"] == min(int(served), 5000), (detected, served)

                def scraped() -> bool:
                    result = httpx.get(
                        f"{prometheus}/api/v1/query",
                        params={"query": 'up{job=~"bitloop-api|mlflow"}'},
                        timeout=5,
                    ).json()["data"]["result"]
                    return sorted(r["metric"]["job"] + r["value"][1] for r in result) == [
                        "bitloop-api1",
                        "bitloop-api1",
                        "mlflow1",
                    ]

                # Both model-server replicas are found by name; MLflow's /metrics is scraped with the
                # password from the secret's file.
                wait_for(scraped, "Prometheus scraping both API replicas and MLflow", 120)
                # No secret is in a container's configuration: environment, command or labels.
                containers = run(
                    "podman", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}"
                ).stdout.split()
                inspected = run("podman", "inspect", *containers).stdout
                leaked = [
                    p.name for p in secrets_dir.iterdir() if p.read_text() and p.read_text() in inspected
                ]
                assert leaked == []
                stats = run("podman", "stats", "--no-stream", "--format", "json").stdout
                memory = {s["name"]: s["mem_usage"] for s in json.loads(stats)}
                print(
                    f"image sizes (MB): {sizes}\nbuild: {built - started:.0f} s, "
                    f"compose up to healthy: {healthy - built:.0f} s\nmemory: {memory}\n"
                    f"answers through the balancer while replicas were stopped and killed: {balanced}"
                )
        finally:
            subprocess.run(
                [*compose, "down", "-v", "--remove-orphans"], cwd=PROJECT, env=env, capture_output=True
            )


@pytest.mark.repro
@pytest.mark.timeout(1200)
def test_rebuilding_an_image_gives_identical_layers() -> None:
    """Two --no-cache builds of the model server image have the same layer digests."""
    require("podman", install="apt-get install podman")
    run("bash", str(PROJECT / "ops" / "compose" / "base-image.sh"), BASE)
    ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    secret = ["--secret", f"id=ca,src={ca}"] if Path(ca).is_file() else []
    layers = []
    for attempt in (1, 2):
        tag = f"bitloop-api:repro-{attempt}"
        run(
            "podman", "build", "--no-cache", "--format", "docker", "--timestamp", "0", *secret,
            "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "SOURCE_DATE_EPOCH=0",
            "-f", "ops/docker/Dockerfile", "--target", "api", "-t", tag, ".",
            cwd=PROJECT,
        )  # fmt: skip
        layers.append(run("podman", "image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout)
        run("podman", "rmi", tag)
    assert layers[0] == layers[1]

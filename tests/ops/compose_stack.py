"""The containerised stack under test: build, compose up, the clients a test needs, tear down.

Our images are built with podman from a local base image; the third-party images no registry
here can supply are replaced by ops/compose/test.override.yml (Debian-built PostgreSQL, Redis,
HAProxy and Prometheus tools; Grafana and cAdvisor left out). docker-compose (or Compose v2)
drives podman through its Docker-compatible API; podman has no systemd here, so the tests run
the healthchecks themselves. `make test-compose` and `make test-scale` share this.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from ops.local.compose import write_compose_secrets
from tests.factories import PROJECT
from tests.servers import free_port
from tests.tools import compose_client, require

BASE = "localhost/bitloop-base:bookworm"
OURS = ("api", "datasource", "mlflow", "pipeline")
TEST_IMAGES = ("postgres", "redis", "prometheus", "haproxy")
SERVICES = (
    "postgres",
    "redis",
    "mlflow",
    "datasource",
    "api",
    "lb",
    "airflow-init",
    "airflow-api",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "pushgateway",
    "prometheus",
    "node-exporter",
)
DIABETES_RECORD = {
    "age": 0.04, "sex": 0.05, "bmi": 0.06, "bp": 0.02, "s1": -0.04,
    "s2": -0.03, "s3": -0.04, "s4": -0.003, "s5": 0.02, "s6": -0.02,
}  # fmt: skip
CHURN_RECORD = {
    "age": 41, "region": "north", "contract": "month_to_month", "internet_service": "fiber",
    "payment_method": "electronic_check", "tenure_months": 5, "monthly_charges": 94.5,
    "total_charges": 472.5, "support_tickets": 3, "num_products": 1,
}  # fmt: skip


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


def wait_for(check: Any, what: str, timeout: float, every: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Background:
    """A thread that repeats `step` until the block ends; what it collects is asserted by the test."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Healthchecks(Background):
    """podman schedules healthchecks through systemd; without it, run them every few seconds."""

    def __init__(self, project: str) -> None:
        super().__init__()
        self.project = project

    def step(self) -> None:
        time.sleep(3)
        label = f"label=com.docker.compose.project={self.project}"
        names = subprocess.run(
            ["podman", "ps", "--filter", label, "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for name in names:
            subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, check=False)


class Load(Background):
    """One client sending predictions through the load balancer until stopped; statuses are kept."""

    def __init__(self, api: str, record: dict[str, Any], path: str = "/predict") -> None:
        super().__init__()
        self.statuses: list[int] = []
        self.client = httpx.Client(base_url=api, timeout=30)
        self.record, self.path = record, path

    def step(self) -> None:
        if len(self.statuses) >= 20_000:
            time.sleep(0.1)
            return
        try:
            self.statuses.append(self.client.post(self.path, json=self.record).status_code)
        except httpx.HTTPError:
            self.statuses.append(-1)
        time.sleep(0.01)

    def __exit__(self, *args: object) -> None:
        super().__exit__(*args)
        self.client.close()


@contextmanager
def podman_service(directory: Path) -> Iterator[str]:
    socket = directory / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(socket.exists, "podman system service", 30, every=0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(30)


@dataclass
class Stack:
    """A running compose stack: its URLs, logins and the commands a test drives it with."""

    project: str
    ports: dict[str, int]
    secrets_dir: Path
    sizes: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def api(self) -> str:
        return self.url("API")

    @property
    def airflow(self) -> str:
        return self.url("AIRFLOW")

    @property
    def mlflow_login(self) -> tuple[str, str]:
        return ("bitloop", (self.secrets_dir / "mlflow_admin_password").read_text())

    def containers(self, service: str, *, all_states: bool = True) -> list[str]:
        return run(
            "podman", "ps", *(["-a"] if all_states else []), "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip

    def psql(self, query: str) -> str:
        """A query on the prediction log's PostgreSQL database."""
        database = self.containers("postgres")[0]
        command = ["podman", "exec", database, "psql", "-U", "postgres", "-d", "predictions", "-tAc", query]
        return run(*command).stdout.strip()

    def airflow_get(self, path: str) -> Any:
        answer = httpx.get(f"{self.airflow}/api/v2/{path}", headers=self.headers, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def trigger(self, dag: str) -> str:
        answer = httpx.post(
            f"{self.airflow}/api/v2/dags/{dag}/dagRuns",
            json={"logical_date": None},
            headers=self.headers,
            timeout=30,
        )
        answer.raise_for_status()
        run_id: str = answer.json()["dag_run_id"]
        return run_id

    def finished(self, dag: str, run_id: str) -> str | None:
        state: str = self.airflow_get(f"dags/{dag}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    def returned(self, dag: str, run_id: str, task: str) -> Any:
        path = f"dags/{dag}/dagRuns/{run_id}/taskInstances/{task}/xcomEntries/return_value"
        value = self.airflow_get(path)["value"]
        return json.loads(value) if isinstance(value, str) else value


def declaring_diabetes(directory: Path) -> Path:
    """A project directory whose params.yaml is the project's with scikit-learn's diabetes regression
    declared beside the churn classifier (for `compose_stack(params=...)`)."""
    import yaml

    from tests.factories import DIABETES

    project = directory / "project"
    project.mkdir()
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["models"] = {"diabetes": {"data": DIABETES}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


@contextmanager
def compose_stack(
    directory: Path, project: str, scale: dict[str, int], params: Path | None = None
) -> Iterator[Stack]:
    """Build the images, bring the stack up with `scale` replicas, wait for the API and Airflow, tear down.

    `params`: a params.yaml the model server and every Airflow service read instead of the one the
    images were built with (as images rebuilt from a project declaring it would hold).
    """
    require("podman", "debootstrap", install="apt-get install podman debootstrap")
    client = compose_client()
    started = time.monotonic()
    sizes = build_images()
    built = time.monotonic()
    ports = {
        name: free_port() for name in ("API", "DATA_SOURCE", "MLFLOW", "AIRFLOW", "PROMETHEUS", "GRAFANA")
    }
    secrets_dir = directory / "secrets"
    write_compose_secrets(secrets_dir)
    env_file = directory / ".env"
    values = {
        "COMPOSE_PROJECT_NAME": project,
        "BITLOOP_SECRETS_DIR": str(secrets_dir),
        "BASE_IMAGE": BASE,
        **{f"BITLOOP_{name}_PORT": str(port) for name, port in ports.items()},
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    stack = Stack(project, ports, secrets_dir, sizes, {"build": built - started})
    with podman_service(directory) as host:
        env = {**os.environ, "DOCKER_HOST": host, "COMPOSE_PROJECT_NAME": project}
        compose = [
            *client, "--project-directory", str(PROJECT), "--env-file", str(env_file),
            "-f", "docker-compose.yml", "-f", "ops/compose/test.override.yml",
        ]  # fmt: skip
        if params is not None:
            mounted = {"volumes": [f"{params}:/opt/bitloop/params.yaml:ro"]}
            readers = ("api", *(s for s in SERVICES if s.startswith("airflow-")))
            override = directory / "params.override.yml"
            override.write_text(json.dumps({"services": dict.fromkeys(readers, mounted)}))
            compose += ["-f", str(override)]
        scaled = [arg for service, n in scale.items() for arg in ("--scale", f"{service}={n}")]
        # A run killed before its teardown leaves its containers and volumes (its database holds the
        # old run's passwords): remove them first, as the teardown below would have.
        leftover = [*compose, "down", "-v", "--remove-orphans"]
        subprocess.run(leftover, cwd=PROJECT, env=env, capture_output=True, check=False)
        try:
            with Healthchecks(project):
                run(*compose, "up", "-d", "--no-build", *scaled, *SERVICES, cwd=PROJECT, env=env)
                wait_for(
                    lambda: httpx.get(f"{stack.api}/health", timeout=5).status_code == 200, "the API", 300
                )
                health = f"{stack.airflow}/api/v2/monitor/health"
                wait_for(lambda: httpx.get(health, timeout=5).status_code == 200, "Airflow", 400)
                stack.timings["healthy"] = time.monotonic() - built
                login = {
                    "username": "admin",
                    "password": (secrets_dir / "airflow_admin_password").read_text(),
                }
                token = httpx.post(f"{stack.airflow}/auth/token", json=login, timeout=30).json()[
                    "access_token"
                ]
                stack.headers["Authorization"] = f"Bearer {token}"
                wait_for(lambda: stack.airflow_get("dags/training"), "the training DAG", 300)
                yield stack
        finally:
            subprocess.run(
                [*compose, "down", "-v", "--remove-orphans"], cwd=PROJECT, env=env, capture_output=True
            )


def replica_get(container: str, path: str) -> str:
    """A GET answered by one model-server replica, from inside its container (replicas publish no port)."""
    # A 503 (a replica not ready yet) is an answer too: its body says why.
    script = (
        "import urllib.error, urllib.request\n"
        "try:\n"
        f"    answer = urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=10)\n"
        "except urllib.error.HTTPError as err:\n"
        "    answer = err\n"
        "print(answer.read().decode())"
    )
    return run("podman", "exec", container, "python3", "-c", script).stdout


def replica_predictions(container: str) -> float:
    """The /predict answers a replica counted."""
    return sum(
        float(line.split()[-1])
        for line in replica_get(container, "/metrics").splitlines()
        if line.startswith("bitloop_http_requests_total{")
        and 'route="/predict"' in line
        and 'status="200"' in line
    )

"""The compose stack, when a Docker engine answers: its secrets, which stack `make up` runs, and
starting and stopping it (`ops/local/stack.py` runs the local one under supervisord)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from ops.local.addresses import MLFLOW_TRAINING_VIEW, print_table
from ops.local.champions import ensure_champion, wait_serving
from ops.local.settings import PROJECT, StackSettings

# The compose stack's secrets, one file each (docker-compose.yml mounts them at /run/secrets/).
COMPOSE_SECRETS = (
    "postgres_password",
    "mlflow_db_password",
    "airflow_db_password",
    "airflow_admin_password",
    "airflow_jwt_secret",
    "mlflow_admin_password",
    "mlflow_flask_secret_key",
    "grafana_admin_password",
    "predictions_db_password",
    "redis_password",
)

API_KEY_SECRET = "api_key"  # noqa: S105 - a file's name. Empty (the default): the model server's /predict is open


def write_compose_secrets(directory: Path) -> list[str]:
    """Create every missing secret file with a random value (the API key empty); returns those written.

    The files are readable by all, for the containers' own users; the directory is the owner's only.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written = []
    for name in (*COMPOSE_SECRETS, API_KEY_SECRET):
        path = directory / name
        if not path.exists():
            path.write_text("" if name == API_KEY_SECRET else secrets.token_urlsafe(32))
            written.append(name)
        path.chmod(0o644)
        if name != API_KEY_SECRET and not path.read_text().strip():
            raise SystemExit(f"{path} is empty: write a secret into it, or delete it to have one generated")
    return written


def compose_command() -> list[str] | None:
    """The compose client of a Docker engine that answers, if there is one."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        return None
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def stack_mode() -> tuple[str, list[str] | None]:
    """compose when a Docker engine answers, else local; STACK=compose|local decides instead."""
    chosen = os.environ.get("STACK", "")
    if chosen not in ("", "compose", "local"):
        raise SystemExit(f"STACK must be `compose` or `local`, not {chosen!r}")
    compose = None if chosen == "local" else compose_command()
    if chosen == "compose" and compose is None:
        raise SystemExit(
            "STACK=compose, but no Docker engine answers `docker info` (with `docker compose` or "
            "docker-compose): start Docker, or leave STACK unset for the local stack"
        )
    return ("compose", compose) if compose else ("local", None)


def compose_secret(settings: StackSettings, name: str) -> str:
    """A secret file's value as the containers read it (ops/docker/secrets-env: trailing newlines dropped)."""
    return (settings.secrets_dir / name).read_text().rstrip("\n")


def compose_up(settings: StackSettings, compose: list[str]) -> None:
    """Start the compose stack, run the training DAG of each declared model without a champion, and
    wait until the model server serves them all."""
    written = write_compose_secrets(settings.secrets_dir)
    if written:
        print(f"generated the secrets {', '.join(written)} in {settings.secrets_dir}", flush=True)
    print(f"starting the compose stack ({' '.join(compose)})", flush=True)
    subprocess.run([*compose, "up", "-d"], cwd=PROJECT, check=True)
    first_champions(settings, f"see `{' '.join(compose)} logs`")
    api = f"http://127.0.0.1:{settings.api_port}"
    grafana = os.environ.get("BITLOOP_GRAFANA_PORT", "3000")
    secret = settings.secrets_dir
    print("\nbitloop compose stack is up:")
    print_table(
        [
            ("api", api, ""),
            (
                "mlflow",
                f"http://127.0.0.1:{settings.mlflow_port}{MLFLOW_TRAINING_VIEW}",
                f"login: bitloop, {secret}/mlflow_admin_password",
            ),
            (
                "airflow",
                f"http://127.0.0.1:{settings.airflow_port}",
                f"login: admin, {secret}/airflow_admin_password",
            ),
            ("datasource", f"http://127.0.0.1:{settings.data_source_port}", ""),
            ("prometheus", f"http://127.0.0.1:{settings.prometheus_port}", ""),
            ("grafana", f"http://127.0.0.1:{grafana}", f"login: admin, {secret}/grafana_admin_password"),
        ]
    )
    print("\n  stop: make down", flush=True)


def first_champions(settings: StackSettings, logs: str) -> None:
    """Once Airflow answers, the training DAG of each declared model without a champion, run once with
    the compose stack's logins; then wait until the model server serves every model."""
    airflow = f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health"
    deadline = time.monotonic() + settings.start_timeout
    while not _answers(airflow):
        if time.monotonic() > deadline:
            raise SystemExit(f"Airflow did not answer at {airflow} in time; {logs}")
        print("  waiting for Airflow", flush=True)
        time.sleep(5.0)
    # This process's MLflow client takes its login from the environment; compose's MLflow wants one.
    os.environ["MLFLOW_TRACKING_USERNAME"] = "bitloop"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = compose_secret(settings, "mlflow_admin_password")
    # Raw: airflow-init hands the file to Airflow as it is, a trailing newline included.
    ensure_champion(settings, (settings.secrets_dir / "airflow_admin_password").read_text())
    wait_serving(settings, compose_secret(settings, API_KEY_SECRET) or None)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def compose_down(compose: list[str]) -> None:
    """Stop the compose stack, if it runs."""
    running = subprocess.run([*compose, "ps", "-q"], cwd=PROJECT, capture_output=True, text=True)
    if running.stdout.strip():
        subprocess.run([*compose, "down"], cwd=PROJECT, check=True)
        print("the compose stack is stopped")

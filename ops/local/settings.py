"""Where the local stack lives: its project, state directory, ports and timeouts, the Airflow
secrets it generates there on first use, and the settings its running services were started with."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT = Path(__file__).resolve().parents[2]


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and which ports it binds (all on 127.0.0.1)."""

    model_config = SettingsConfigDict(env_prefix="BITLOOP_", extra="ignore")

    state_dir: Path = PROJECT / ".bitloop"
    secrets_dir: Path = PROJECT / ".bitloop" / "secrets"  # the compose stack's; docker-compose.yml agrees
    mlflow_port: int = 5000
    data_source_port: int = 8001
    api_port: int = 8000
    airflow_port: int = 8080
    airflow_execution_port: int = 8081
    """BITLOOP_AIRFLOW_EXECUTION_PORT: Airflow's task execution API, which only its tasks call."""
    prometheus_port: int = 9090
    pushgateway_port: int = 9091
    process_exporter_port: int = 9256
    start_timeout: float = 240.0
    training_timeout: float = 900.0
    prediction_log_url: str | None = None
    """BITLOOP_PREDICTION_LOG_URL: a SQLite path or a postgresql:// URL; by default in the state directory."""

    def log_url(self) -> str:
        return self.prediction_log_url or str(self.state_dir.resolve() / "predictions.sqlite")


def airflow_secrets(settings: StackSettings) -> dict[str, str]:
    """The Airflow admin password and JWT secret: generated on first use, kept in the state directory."""
    home = settings.state_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    path = home / "secrets.json"
    if not path.exists():
        path.write_text(
            json.dumps({"admin_password": secrets.token_urlsafe(18), "jwt_secret": secrets.token_urlsafe(32)})
        )
        path.chmod(0o600)
    values: dict[str, str] = json.loads(path.read_text())
    passwords = home / "passwords.json"  # the format Airflow's simple auth manager reads
    passwords.write_text(json.dumps({"admin": values["admin_password"]}))
    passwords.chmod(0o600)
    return values


# The settings the services read from the environment supervisord started them with.
CONFIGURATION_PREFIXES = ("BITLOOP_", "MLFLOW_", "AIRFLOW_", "PROMETHEUS_")


def _configuration(env: dict[str, str]) -> dict[str, str]:
    # Hashes, not values: the state directory must not hold the API key.
    return {
        name: hashlib.sha256(value.encode()).hexdigest()
        for name, value in env.items()
        if name.startswith(CONFIGURATION_PREFIXES)
    }


def _configuration_file(settings: StackSettings) -> Path:
    return settings.state_dir / "running-configuration.json"


def configuration_changes(settings: StackSettings, env: dict[str, str]) -> list[str]:
    """The variables whose value differs from what the running services were started with."""
    path = _configuration_file(settings)
    if not path.exists():
        return []
    before: dict[str, str] = json.loads(path.read_text())
    now = _configuration(env)
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


def record_configuration(settings: StackSettings, env: dict[str, str]) -> None:
    path = _configuration_file(settings)
    path.write_text(json.dumps(_configuration(env), indent=1, sort_keys=True))
    path.chmod(0o600)

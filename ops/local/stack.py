"""`make up/down/status/logs`: the local stack without a container engine, every service under
supervisord (the compose stack, when a Docker engine answers: ops/local/compose.py).

`make up` starts (or re-uses) supervisord, waits for each service to answer, trains and promotes a
champion with `dvc repro` when the registry has none, and prints every URL; again, it prints the
URLs, or names the settings that changed since the services started. `make down` stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops.local.addresses import MLFLOW_TRAINING_VIEW, print_table
from ops.local.champions import ensure_champion, wait_serving
from ops.local.compose import compose_command, compose_down, compose_up, stack_mode, write_compose_secrets
from ops.local.settings import (
    PROJECT,
    StackSettings,
    airflow_secrets,
    configuration_changes,
    record_configuration,
)

CONFIG = PROJECT / "ops" / "supervisor" / "supervisord.conf"


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    health: str
    login: str = "none (local only)"
    for_people: bool = True  # `make up` prints its URL


# Optional services: supervisord program -> (binary, Debian package). Started when the binary is here.
OPTIONAL = {
    "prometheus": ("prometheus", "prometheus"),
    "pushgateway": ("prometheus-pushgateway", "prometheus-pushgateway"),
    "process-exporter": ("prometheus-process-exporter", "prometheus-process-exporter"),
}


def skipped_services() -> dict[str, str]:
    """Optional services that will not run here, with the reason."""
    skipped = {
        name: f"no `{binary}` on PATH (Debian: apt-get install {package}; or nix develop)"
        for name, (binary, package) in OPTIONAL.items()
        if shutil.which(binary) is None
    }
    skipped["grafana"] = (
        "the local stack has no Grafana: its dashboards are served by the compose stack "
        "(Grafana is not packaged for Debian)"
    )
    return skipped


def render_prometheus_config(values: dict[str, str]) -> str:
    """ops/prometheus/prometheus.local.yml with its BITLOOP_ variables filled in."""
    template = string.Template((PROJECT / "ops" / "prometheus" / "prometheus.local.yml").read_text())
    return template.substitute(values)


def services(settings: StackSettings) -> list[Service]:
    mlflow = f"http://127.0.0.1:{settings.mlflow_port}"
    source = f"http://127.0.0.1:{settings.data_source_port}"
    api = f"http://127.0.0.1:{settings.api_port}"
    airflow = f"http://127.0.0.1:{settings.airflow_port}"
    execution = f"http://127.0.0.1:{settings.airflow_execution_port}"
    password_file = settings.state_dir / "airflow" / "passwords.json"
    found = [
        Service("mlflow", f"{mlflow}{MLFLOW_TRAINING_VIEW}", f"{mlflow}/health"),
        Service("datasource", source, f"{source}/health"),
        Service("api", api, f"{api}/health", login="none (set BITLOOP_API_API_KEY to require X-API-Key)"),
        Service(
            "airflow",
            airflow,
            f"{airflow}/api/v2/monitor/health",
            login=f"admin, password in {password_file}",
        ),
        Service(
            "airflow tasks",
            f"{execution}/execution/",
            f"{execution}/execution/health",
            login="for Airflow's own tasks (a token per task)",
            for_people=False,
        ),
    ]
    skipped = skipped_services()
    if "prometheus" not in skipped:
        prometheus = f"http://127.0.0.1:{settings.prometheus_port}"
        found.append(Service("prometheus", prometheus, f"{prometheus}/-/ready"))
    if "pushgateway" not in skipped:
        pushgateway = f"http://127.0.0.1:{settings.pushgateway_port}"
        found.append(Service("pushgateway", pushgateway, f"{pushgateway}/-/ready"))
    if "process-exporter" not in skipped:
        exporter = f"http://127.0.0.1:{settings.process_exporter_port}"
        found.append(Service("process-exporter", exporter, f"{exporter}/metrics"))
    return found


def _environment(settings: StackSettings) -> dict[str, str]:
    state = settings.state_dir.resolve()
    return {
        **os.environ,
        "BITLOOP_STATE_DIR": str(state),
        "BITLOOP_PROJECT_DIR": str(PROJECT),
        "BITLOOP_BIN": str(Path(sys.executable).parent),
        "BITLOOP_MLFLOW_PORT": str(settings.mlflow_port),
        "BITLOOP_DATA_SOURCE_PORT": str(settings.data_source_port),
        "BITLOOP_API_PORT": str(settings.api_port),
        "BITLOOP_AIRFLOW_PORT": str(settings.airflow_port),
        "BITLOOP_AIRFLOW_EXECUTION_PORT": str(settings.airflow_execution_port),
        "BITLOOP_PROMETHEUS_PORT": str(settings.prometheus_port),
        "BITLOOP_PUSHGATEWAY_PORT": str(settings.pushgateway_port),
        "BITLOOP_PROCESS_EXPORTER_PORT": str(settings.process_exporter_port),
        "BITLOOP_PREDICTION_LOG_URL": settings.log_url(),
        # The DAGs push their run outcomes here; empty (no pushes) without a Pushgateway.
        "BITLOOP_PUSHGATEWAY_URL": ""
        if "pushgateway" in skipped_services()
        else f"127.0.0.1:{settings.pushgateway_port}",
        # The rollout decider reads each side's failures and model-call times here; without a
        # Prometheus those SLOs are skipped, and its verdicts say so.
        "BITLOOP_PROMETHEUS_URL": ""
        if "prometheus" in skipped_services()
        else f"http://127.0.0.1:{settings.prometheus_port}",
        "BITLOOP_AIRFLOW_JWT_SECRET": airflow_secrets(settings)["jwt_secret"],
        "AIRFLOW_HOME": str(state / "airflow"),
        # Airflow's five processes share one SQLite file; a write that waits longer than pysqlite's
        # 5 s default for the lock fails ("database is locked"), and the API answers that with a 500.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{state / 'airflow' / 'airflow.db'}?timeout=60",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{settings.mlflow_port}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def _supervisorctl(settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(CONFIG), *args],
        env=_environment(settings),
        capture_output=True,
        text=True,
        check=False,
    )


def supervisor_running(settings: StackSettings) -> bool:
    return _supervisorctl(settings, "pid").stdout.strip().isdigit()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(settings: StackSettings) -> None:
    deadline = time.monotonic() + settings.start_timeout
    pending = services(settings)
    while pending:
        pending = [s for s in pending if not _healthy(s.health)]
        for s in pending:
            print(f"  waiting for {s.name} ({s.health})", flush=True)
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise SystemExit(f"timed out waiting for {names}; see `make logs` or {settings.state_dir}/logs/")
        time.sleep(3.0)


def check_ports_free(settings: StackSettings) -> None:
    """Fail at once, naming the variable to change, when another program holds a port we need."""
    ports = {
        "BITLOOP_MLFLOW_PORT": settings.mlflow_port,
        "BITLOOP_DATA_SOURCE_PORT": settings.data_source_port,
        "BITLOOP_API_PORT": settings.api_port,
        "BITLOOP_AIRFLOW_PORT": settings.airflow_port,
        "BITLOOP_AIRFLOW_EXECUTION_PORT": settings.airflow_execution_port,
    }
    skipped = skipped_services()
    optional = {
        "prometheus": ("BITLOOP_PROMETHEUS_PORT", settings.prometheus_port),
        "pushgateway": ("BITLOOP_PUSHGATEWAY_PORT", settings.pushgateway_port),
        "process-exporter": ("BITLOOP_PROCESS_EXPORTER_PORT", settings.process_exporter_port),
    }
    ports.update(dict(port for name, port in optional.items() if name not in skipped))
    for variable, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise SystemExit(
                    f"port {port} on 127.0.0.1 is already in use by another program: stop it, "
                    f"or choose another port, e.g. `{variable}={port + 100} make up`"
                ) from None


def start_optional(settings: StackSettings, env: dict[str, str]) -> None:
    """Start the optional services whose binaries are here; the others are reported as skipped."""
    skipped = skipped_services()
    if "prometheus" not in skipped:
        config = settings.state_dir / "prometheus" / "prometheus.yml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(render_prometheus_config(env))
    for name in OPTIONAL:
        if name not in skipped:
            _supervisorctl(settings, "start", name)


def check_prediction_log(settings: StackSettings) -> None:
    """Stop before anything starts when the prediction log cannot be opened (the message names the
    variable and never the password)."""
    from core.predictions.backends import open_store
    from core.predictions.rows import PredictionLogUnavailable

    try:
        open_store(settings.log_url()).close()
    except PredictionLogUnavailable as err:
        raise SystemExit(f"bitloop cannot start: {err}") from None


def up(settings: StackSettings) -> None:
    _, compose = stack_mode()
    if compose is not None:
        compose_up(settings, compose)
        return
    check_prediction_log(settings)
    for sub in ("logs", "mlflow", "prometheus"):
        (settings.state_dir / sub).mkdir(parents=True, exist_ok=True)
    env = _environment(settings)
    if supervisor_running(settings):
        changed = configuration_changes(settings, env)
        if changed:
            raise SystemExit(
                f"the running stack was started with other settings; changed since: {', '.join(changed)}.\n"
                "Apply them with `make down && make up` (every service restarts; state and models are "
                "kept), or run `make up` with the settings it was started with."
            )
        _supervisorctl(settings, "start", "bitloop:*")
    else:
        check_ports_free(settings)
        print("preparing Airflow's metadata database", flush=True)
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print("starting supervisord", flush=True)
        subprocess.run(
            [str(Path(sys.executable).parent / "supervisord"), "-c", str(CONFIG)], env=env, check=True
        )
        record_configuration(settings, env)
    start_optional(settings, env)
    wait_healthy(settings)
    ensure_champion(settings)
    wait_serving(settings)
    print_urls(settings)


def print_urls(settings: StackSettings) -> None:
    api = f"http://127.0.0.1:{settings.api_port}"
    rows = [(s.name, s.url, f"login: {s.login}") for s in services(settings) if s.for_people]
    rows += [("api docs", f"{api}/docs", ""), ("predict", f"{api}/", "(a form for the served model)")]
    rows += [(name, f"skipped: {reason}", "") for name, reason in skipped_services().items()]
    print("\nbitloop is up:")
    print_table(rows)
    print(f"\n  state: {settings.state_dir}   logs: make logs   stop: make down")


def down(settings: StackSettings) -> None:
    compose = None if os.environ.get("STACK") == "local" else compose_command()
    if compose is not None:
        compose_down(compose)
    if not supervisor_running(settings):
        print("the local stack is not running")
        return
    pid = int(_supervisorctl(settings, "pid").stdout.strip())
    _supervisorctl(settings, "shutdown")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("the local stack is stopped")
            return
        time.sleep(0.5)
    raise SystemExit(f"supervisord (pid {pid}) did not stop within 60 s")


def status(settings: StackSettings) -> int:
    if not supervisor_running(settings):
        print("the local stack is not running (make up)")
        return 3
    print(_supervisorctl(settings, "status").stdout.rstrip())
    print_table(
        [(s.name, s.url, "healthy" if _healthy(s.health) else "NOT answering") for s in services(settings)]
    )
    return 0


def logs(settings: StackSettings) -> None:
    files = sorted(str(p) for p in (settings.state_dir / "logs").glob("*.log"))
    if not files:
        raise SystemExit("no logs yet: start the stack with `make up`")
    os.execvp("tail", ["tail", "-n", "40", "-F", *files])  # noqa: S606 - replaces this process


def main() -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status", "logs", "secrets"))
    command = parser.parse_args().command
    settings = StackSettings()
    if command == "up":
        up(settings)
    elif command == "down":
        down(settings)
    elif command == "logs":
        logs(settings)
    elif command == "secrets":
        written = write_compose_secrets(settings.secrets_dir)
        print(f"{settings.secrets_dir}: generated {', '.join(written) or 'nothing (every secret exists)'}")
    else:
        return status(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

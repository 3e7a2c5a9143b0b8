"""What the bitloop DAGs share: the assets that link them and the call into the pipeline's CLI.

Task callbacks push each DAG's last success and failure times to a Prometheus Pushgateway
(BITLOOP_PUSHGATEWAY_URL), which the alert rules read. Not a DAG file (see .airflowignore):
Airflow puts the DAG folder on sys.path, so the DAG files import it as `bitloop_stages`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

DRIFT = Asset(name="bitloop_drift", uri="bitloop://monitoring/dataset-drift")
"""Updated by the drift monitor when live traffic has drifted from the champion's reference."""
QUALITY = Asset(name="bitloop_quality", uri="bitloop://monitoring/live-quality")
"""Updated by the ground_truth DAG when the champion's live quality is past its limits."""
CHAMPION = Asset(name="bitloop_champion", uri="bitloop://registry/champion")
"""Updated whenever a training run finishes its promotion decision."""
EXIT_INVALID_DATA = 3  # the pipeline CLI's exit code for a bad batch (core.errors.EXIT_INVALID_DATA)


def _push(dag_id: str, metric: str, description: str, labels: dict[str, str]) -> None:
    """Set one timestamp gauge for the DAG in the Pushgateway at BITLOOP_PUSHGATEWAY_URL (if set)."""
    url = os.environ.get("BITLOOP_PUSHGATEWAY_URL")
    if not url:
        return
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()
    gauge = Gauge(metric, description, list(labels), registry=registry)
    gauge.labels(**labels).set_to_current_time()
    try:  # POST: replaces this metric only, so the success and failure gauges live side by side
        pushadd_to_gateway(
            url, job="bitloop_dags", grouping_key={"dag_id": dag_id}, registry=registry, timeout=5
        )
    except OSError as err:  # monitoring must never fail the run it reports on
        log.warning("could not push the run outcome to %s: %s", url, err)


def record_failure(context: Any) -> None:
    """Task callback: a task failed for good (retries exhausted)."""
    ti = context["ti"]
    _push(
        ti.dag_id,
        "bitloop_dag_last_failure_timestamp_seconds",
        "Unix time of the DAG's last task failure (after retries)",
        {"dag_id": ti.dag_id, "task_id": ti.task_id},
    )


def record_success(context: Any) -> None:
    """Task callback for the task that completes a run."""
    ti = context["ti"]
    _push(
        ti.dag_id,
        "bitloop_dag_last_success_timestamp_seconds",
        "Unix time the DAG last completed a run",
        {"dag_id": ti.dag_id},
    )


# A cron timetable's `run_immediately`: a DAG unpaused for the first time waits for its next cron
# time. Airflow's default (False) still runs the missed one when it was less than a tenth of the
# period ago (2.4 hours for @daily), which raced `make up`'s own training run; a zero buffer never
# does.
NEVER_THE_MISSED_RUN = timedelta(0)

DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": record_failure,
}


def project_dir() -> str:
    """The project the pipeline runs in: BITLOOP_PROJECT_DIR, else the one holding this DAG folder."""
    return os.environ.get("BITLOOP_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class Model:
    """A model params.yaml declares, as its DAGs name it. The default model (`model.name`) keeps the
    names a one-model project always had (`training`, `bitloop_drift`); every model under `models:`
    has its own (`training.<name>`, `bitloop_drift/<name>`)."""

    name: str
    default: bool

    def dag_id(self, kind: str) -> str:
        return kind if self.default else f"{kind}.{self.name}"

    def display_name(self, kind: str) -> str:
        """What the Airflow UI lists: the kind and the model, e.g. `training · diabetes`."""
        return f"{kind} · {self.name}"

    def asset(self, base: Asset) -> Asset:
        if self.default:
            return base
        return Asset(name=f"{base.name}/{self.name}", uri=f"{base.uri}/{self.name}")

    @property
    def tags(self) -> list[str]:
        """Shown on every DAG in the Airflow UI, and a filter there: `model:<name>`."""
        return ["bitloop", f"model:{self.name}"]

    @property
    def option(self) -> list[str]:
        """The pipeline CLI's argument choosing this model."""
        return ["--model", self.name]


def declared_models() -> list[Model]:
    """The models the project's params.yaml declares, the default first. Read with nothing but YAML
    (the pipeline may not be importable here); `python -m pipeline` validates them when a task runs."""
    raw = yaml.safe_load((Path(project_dir()) / "params.yaml").read_text()) or {}
    default = str(raw["model"]["name"])
    return [Model(default, True), *(Model(str(name), False) for name in raw.get("models") or {})]


def run_stage(*args: str) -> str:
    """Run `python -m pipeline <args>` in the pipeline's environment; its JSON output goes to XCom.

    The interpreter is BITLOOP_PIPELINE_PYTHON and the project BITLOOP_PROJECT_DIR, so the
    pipeline may live in another environment than Airflow.
    """
    python = os.environ.get("BITLOOP_PIPELINE_PYTHON", sys.executable)
    project = project_dir()
    command = [python, "-m", "pipeline", "--root", project, *args]
    log.info("running %s", " ".join(command))
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    for line in done.stderr.splitlines():
        log.info(line)
    what = " ".join(args)
    if done.returncode == EXIT_INVALID_DATA:
        raise AirflowFailException(f"{what} rejected the data (no retry):\n{done.stderr[-4000:]}")
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def retrain_allowed(signal: str, model: Model) -> bool:
    """The retraining policy's answer for `signal` (params.yaml `retrain`), its reason logged."""
    verdict = json.loads(run_stage("retrain-gate", "--signal", signal, *model.option))
    log.info("retraining %s: %s", "allowed" if verdict["retrain"] else "held back", verdict["reason"])
    return bool(verdict["retrain"])

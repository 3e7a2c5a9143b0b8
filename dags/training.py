"""Training: ingest → validate → split → train → evaluate → register → promote → summary.

Each task runs one stage of the pipeline in the pipeline's own environment
(`<BITLOOP_PIPELINE_PYTHON> -m pipeline <stage>` in BITLOOP_PROJECT_DIR); no step logic lives
here. Runs daily (BITLOOP_TRAINING_SCHEDULE) or when the drift monitor updates the drift asset.
Every stage is idempotent: a retried task never duplicates a batch or a model version.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

DRIFT = Asset(name="bitloop_drift", uri="bitloop://monitoring/dataset-drift")
"""Updated by the drift monitor when live traffic has drifted from the champion's reference."""
CHAMPION = Asset(name="bitloop_champion", uri="bitloop://registry/champion")
"""Updated whenever a training run finishes its promotion decision."""
EXIT_INVALID_DATA = 3  # the pipeline CLI's exit code for a bad batch (pipeline.__main__.EXIT_INVALID_DATA)
DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def run_stage(stage: str, *args: str) -> str:
    """Run `python -m pipeline <stage>` in the pipeline's environment; its JSON output goes to XCom."""
    python = os.environ.get("BITLOOP_PIPELINE_PYTHON", sys.executable)
    project = os.environ.get("BITLOOP_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))
    command = [python, "-m", "pipeline", "--root", project, stage, *args]
    log.info("running %s", " ".join(command))
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    for line in done.stderr.splitlines():
        log.info(line)
    if done.returncode == EXIT_INVALID_DATA:
        raise AirflowFailException(f"stage {stage} rejected the data (no retry):\n{done.stderr[-4000:]}")
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def batch_seed(run_id: str) -> int:
    """The simulated batch a run ingests: fixed per run, so a retried ingest appends nothing new."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)


@dag(
    dag_id="training",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(os.environ.get("BITLOOP_TRAINING_SCHEDULE", "@daily"), timezone="UTC"),
        assets=DRIFT,
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"drift": None},
    tags=["bitloop", "training"],
    doc_md=__doc__,
)
def training() -> None:
    @task
    def ingest() -> str:
        context = get_current_context()
        args = ["--seed", str(batch_seed(context["run_id"]))]
        drift = context["params"].get("drift")
        if drift is not None:
            args += ["--drift", str(drift)]
        return run_stage("ingest", *args)

    @task
    def validate() -> str:
        return run_stage("validate")

    @task
    def split() -> str:
        return run_stage("split")

    @task
    def train() -> str:
        return run_stage("train")

    @task
    def evaluate() -> str:
        return run_stage("evaluate")

    @task
    def register() -> str:
        return run_stage("register")

    @task
    def promote() -> str:
        return run_stage("promote")

    @task(outlets=[CHAMPION])
    def summary() -> str:
        return run_stage("summary", "--run-label", get_current_context()["run_id"])

    stages = [ingest(), validate(), split(), train(), evaluate(), register(), promote(), summary()]
    for upstream, downstream in itertools.pairwise(stages):
        upstream >> downstream


training()

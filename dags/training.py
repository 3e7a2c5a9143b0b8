"""Training: ingest → validate → split → train → evaluate → register → promote → summary.

Each task runs one stage of dvc.yaml through DVC in the pipeline's own environment
(`<BITLOOP_PIPELINE_PYTHON> -m pipeline repro <stage>` in BITLOOP_PROJECT_DIR), the same path as
`make repro`, so dvc.lock describes every run and each new data version is pushed to the DVC
remote; no step logic lives here. Runs daily (BITLOOP_TRAINING_SCHEDULE), when the drift monitor
updates the drift asset, or when the ground_truth DAG updates the quality asset; `gate` lets a
scheduled run through only when the retraining policy (`retrain.triggers`) lists the schedule.
Every stage is idempotent: a retried task never duplicates a batch or a model version.

One such DAG per model params.yaml declares: `training` for the default model (`model.name`),
`training.<name>` for each model under `models:`, each started by its own model's assets and
running its own model's stages, tagged `model:<name>`.
"""

from __future__ import annotations

import hashlib
import itertools
import os

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from bitloop_stages import (
    CHAMPION,
    DEFAULT_ARGS,
    DRIFT,
    NEVER_THE_MISSED_RUN,
    QUALITY,
    Model,
    declared_models,
    record_success,
    retrain_allowed,
    run_stage,
)


def batch_seed(run_id: str) -> int:
    """The simulated batch a run ingests: fixed per run, so a retried ingest appends nothing new."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)


def training_dag(model: Model) -> None:
    """The training DAG of one declared model."""

    @dag(
        dag_id=model.dag_id("training"),
        dag_display_name=model.display_name("training"),
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(
                os.environ.get("BITLOOP_TRAINING_SCHEDULE", "@daily"),
                timezone="UTC",
                run_immediately=NEVER_THE_MISSED_RUN,
            ),
            assets=model.asset(DRIFT) | model.asset(QUALITY),
        ),
        # No start_date: the first scheduled run is the next one, not the one just missed when
        # the DAG is unpaused (which raced `make up`'s own first training run).
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params={"drift": None},
        tags=[*model.tags, "training"],
        doc_md=__doc__,
    )
    def training() -> None:
        @task.short_circuit
        def gate() -> bool:
            """A scheduled run trains only when the retraining policy lists the schedule; a run the
            drift or quality asset started was let through by that policy already, a manual one
            always runs."""
            if get_current_context()["dag_run"].run_type != "scheduled":
                return True
            return retrain_allowed("schedule", model)

        @task
        def ingest() -> str:
            context = get_current_context()
            args = ["repro", "ingest", "--seed", str(batch_seed(context["run_id"])), *model.option]
            drift = context["params"].get("drift")
            if drift is not None:
                args += ["--drift", str(drift)]
            if source := os.environ.get("BITLOOP_DATA_SOURCE_URL"):  # the data-source service's world
                args += ["--source-url", source]
            return run_stage(*args)

        @task
        def validate() -> str:
            return run_stage("repro", "validate", *model.option)

        @task
        def split() -> str:
            return run_stage("repro", "split", *model.option)

        @task
        def train() -> str:
            return run_stage("repro", "train", *model.option)

        @task
        def evaluate() -> str:
            return run_stage("repro", "evaluate", *model.option)

        @task
        def register() -> str:
            return run_stage("repro", "register", *model.option)

        @task
        def promote() -> str:
            return run_stage("repro", "promote", *model.option)

        @task(outlets=[model.asset(CHAMPION)], on_success_callback=record_success)
        def summary() -> str:
            return run_stage("summary", "--run-label", get_current_context()["run_id"], *model.option)

        stages = [
            gate(),
            ingest(),
            validate(),
            split(),
            train(),
            evaluate(),
            register(),
            promote(),
            summary(),
        ]
        for upstream, downstream in itertools.pairwise(stages):
            upstream >> downstream

    training()


for declared in declared_models():
    training_dag(declared)

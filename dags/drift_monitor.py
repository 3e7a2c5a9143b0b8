"""Drift monitor: live inputs against the champion's reference; drift triggers retraining.

`detect` runs `<BITLOOP_PIPELINE_PYTHON> -m pipeline drift` over the prediction-log rows of the
run's data interval (the last BITLOOP_DRIFT_WINDOW_MINUTES, default 60, before the run) and logs
the report to MLflow. When the dataset has drifted, `emit` updates the `bitloop_drift` asset,
which schedules the training DAG. Too few new rows, or no champion yet, skips `emit`.
Runs hourly (BITLOOP_DRIFT_SCHEDULE). Idempotent: a rerun reads the same window and finds its
MLflow report already logged. The retraining policy (`retrain` in params.yaml: triggers,
cooldown) decides whether a drift verdict emits.

One such DAG per model params.yaml declares (`drift_monitor` for `model.name`, `drift_monitor.<name>` for each
model under `models:`), each reading and acting on its own model only (bitloop_stages.Model).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from bitloop_stages import (
    DEFAULT_ARGS,
    DRIFT,
    NEVER_THE_MISSED_RUN,
    Model,
    declared_models,
    record_success,
    retrain_allowed,
    run_stage,
)

WINDOW = timedelta(minutes=float(os.environ.get("BITLOOP_DRIFT_WINDOW_MINUTES", "60")))


def data_window(context: Any) -> tuple[datetime, datetime]:
    """The run's data interval; a run triggered without a logical date reads the WINDOW before it."""
    until = context.get("data_interval_end") or context["dag_run"].run_after
    since = context.get("data_interval_start")
    if since is None or since >= until:
        since = until - WINDOW
    return since, until


def drift_monitor_dag(model: Model) -> None:
    """The drift monitor DAG of one declared model."""

    @dag(
        dag_id=model.dag_id("drift_monitor"),
        dag_display_name=model.display_name("drift_monitor"),
        schedule=CronTriggerTimetable(
            os.environ.get("BITLOOP_DRIFT_SCHEDULE", "@hourly"),
            timezone="UTC",
            interval=WINDOW,
            run_immediately=NEVER_THE_MISSED_RUN,
        ),
        # No start_date: the first scheduled run is the next one, not the one just missed when
        # the DAG is unpaused (which raced `make up`'s own first training run).
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*model.tags, "monitoring"],
        doc_md=__doc__,
    )
    def drift_monitor() -> None:
        @task(on_success_callback=record_success)
        def detect() -> dict[str, Any]:
            context = get_current_context()
            since, until = data_window(context)
            args = [
                "--since",
                since.isoformat(),
                "--until",
                until.isoformat(),
                "--label",
                context["run_id"],
                *model.option,
            ]
            if log := os.environ.get("BITLOOP_PREDICTION_LOG_URL"):
                args += ["--log", log]
            result: dict[str, Any] = json.loads(run_stage("drift", *args))
            return result

        @task.short_circuit
        def drifted(result: dict[str, Any]) -> bool:
            """Continue to `emit` only on dataset drift the retraining policy lets start training (a
            skipped `emit` emits no asset event)."""
            return bool(result["dataset_drift"]) and retrain_allowed("drift", model)

        @task(outlets=[model.asset(DRIFT)])
        def emit(result: dict[str, Any]) -> dict[str, Any]:
            extra = {
                key: result.get(key)
                for key in ("drift_share", "rows", "drifted_features", "champion_version", "mlflow_run_id")
            }
            get_current_context()["outlet_events"][model.asset(DRIFT)].extra = extra
            return extra

        result = detect()
        drifted(result) >> emit(result)  # type: ignore[arg-type]  # XComArg resolves to the dict at run time

    drift_monitor()


for declared in declared_models():
    drift_monitor_dag(declared)

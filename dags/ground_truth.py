"""Ground truth: the outcomes the world released, sent to the model server.

`collect` runs `<BITLOOP_PIPELINE_PYTHON> -m pipeline ground-truth`: the prediction log's answered
predictions of the last BITLOOP_GROUND_TRUTH_WINDOW_HOURS (default 24) that carry an entity id
and still lack an outcome are looked up in the data-source service (BITLOOP_DATA_SOURCE_URL,
`POST /outcomes`), and the outcomes it has released go to the model server (BITLOOP_API_URL,
`POST /feedback`, with BITLOOP_API_API_KEY), whose live quality then counts them. `judge` scores
the champion's live quality over the same window against its limits (promote.floors; the holdout
figure less quality.max_drop); when they are breached and the retraining policy allows it, `emit`
updates the `bitloop_quality` asset, which schedules training. Runs every five minutes
(BITLOOP_GROUND_TRUTH_SCHEDULE). Idempotent: a rerun finds those outcomes stored.

One such DAG per model params.yaml declares (`ground_truth` for `model.name`, `ground_truth.<name>` for each
model under `models:`), each reading and acting on its own model only (bitloop_stages.Model).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from bitloop_stages import (
    DEFAULT_ARGS,
    NEVER_THE_MISSED_RUN,
    QUALITY,
    Model,
    declared_models,
    record_success,
    retrain_allowed,
    run_stage,
)

WINDOW = timedelta(hours=float(os.environ.get("BITLOOP_GROUND_TRUTH_WINDOW_HOURS", "24")))


def over_window(command: str, model: Model) -> dict[str, Any]:
    """`python -m pipeline <command>` for `model` over the predictions of the WINDOW before this run;
    its JSON."""
    args = ["--since", (get_current_context()["dag_run"].run_after - WINDOW).isoformat(), *model.option]
    if log := os.environ.get("BITLOOP_PREDICTION_LOG_URL"):
        args += ["--log", log]
    result: dict[str, Any] = json.loads(run_stage(command, *args))
    return result


def ground_truth_dag(model: Model) -> None:
    """The ground truth DAG of one declared model."""

    @dag(
        dag_id=model.dag_id("ground_truth"),
        dag_display_name=model.display_name("ground_truth"),
        schedule=CronTriggerTimetable(
            os.environ.get("BITLOOP_GROUND_TRUTH_SCHEDULE", "*/5 * * * *"),
            timezone="UTC",
            run_immediately=NEVER_THE_MISSED_RUN,
        ),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*model.tags, "monitoring"],
        doc_md=__doc__,
    )
    def ground_truth() -> None:
        @task(on_success_callback=record_success)
        def collect() -> dict[str, Any]:
            return over_window("ground-truth", model)

        @task
        def judge() -> dict[str, Any]:
            """The champion's live quality over the window against its limits."""
            return over_window("quality", model)

        @task.short_circuit
        def degraded(verdict: dict[str, Any]) -> bool:
            """Continue to `emit` only when live quality is past its limits and the retraining policy
            lets that start training."""
            return bool(verdict["breached"]) and retrain_allowed("quality", model)

        @task(outlets=[model.asset(QUALITY)])
        def emit(verdict: dict[str, Any]) -> dict[str, Any]:
            extra = {key: verdict.get(key) for key in ("version", "labelled", "realized", "breaches")}
            get_current_context()["outlet_events"][model.asset(QUALITY)].extra = extra
            return extra

        verdict = judge()
        collect() >> verdict
        degraded(verdict) >> emit(verdict)  # type: ignore[arg-type]  # XComArg resolves to the dict at run time

    ground_truth()


for declared in declared_models():
    ground_truth_dag(declared)

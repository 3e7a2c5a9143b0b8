"""The rollout decider: a canary earns its traffic or is rolled back.

`decide` runs `<BITLOOP_PIPELINE_PYTHON> -m pipeline rollout decide` every minute
(BITLOOP_ROLLOUT_SCHEDULE): with a `@canary` under way it gathers the evidence since the rollout
started (Prometheus at BITLOOP_PROMETHEUS_URL, the prediction log at BITLOOP_PREDICTION_LOG_URL)
and promotes the canary, rolls it back, or waits (`pipeline.loop.decider`). One run at a time; a run
keeps nothing between runs, so one that dies is simply followed by the next, which reads the
same registry. A rollback or promotion updates the `bitloop_champion` asset.

One such DAG per model params.yaml declares (`rollout` for `model.name`, `rollout.<name>` for each
model under `models:`), each reading and acting on its own model only (bitloop_stages.Model).
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from bitloop_stages import (
    CHAMPION,
    DEFAULT_ARGS,
    NEVER_THE_MISSED_RUN,
    Model,
    declared_models,
    record_success,
    run_stage,
)


def rollout_dag(model: Model) -> None:
    """The rollout DAG of one declared model."""

    @dag(
        dag_id=model.dag_id("rollout"),
        dag_display_name=model.display_name("rollout"),
        schedule=CronTriggerTimetable(
            os.environ.get("BITLOOP_ROLLOUT_SCHEDULE", "* * * * *"),
            timezone="UTC",
            run_immediately=NEVER_THE_MISSED_RUN,
        ),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*model.tags, "rollout"],
        doc_md=__doc__,
    )
    def rollout() -> None:
        @task(on_success_callback=record_success)
        def decide() -> dict[str, Any]:
            args = ["rollout", "decide", *model.option]
            if log := os.environ.get("BITLOOP_PREDICTION_LOG_URL"):
                args += ["--log", log]
            verdict: dict[str, Any] = json.loads(run_stage(*args))
            return verdict

        @task.short_circuit
        def ended(verdict: dict[str, Any]) -> bool:
            """Continue to `emit` only when the canary was promoted or rolled back."""
            return verdict["action"] in ("promote", "rollback")

        @task(outlets=[model.asset(CHAMPION)])
        def emit(verdict: dict[str, Any]) -> dict[str, Any]:
            extra = {key: verdict.get(key) for key in ("version", "stable", "action", "reason")}
            get_current_context()["outlet_events"][model.asset(CHAMPION)].extra = extra
            return extra

        verdict = decide()
        ended(verdict) >> emit(verdict)  # type: ignore[arg-type]  # XComArg resolves to the dict at run time

    rollout()


for declared in declared_models():
    rollout_dag(declared)

"""The rollout decider: a canary earns its traffic or is rolled back.

`decide` runs `<BITLOOP_PIPELINE_PYTHON> -m pipeline rollout decide` every minute
(BITLOOP_ROLLOUT_SCHEDULE): with a `@canary` under way it gathers the evidence since the rollout
started (Prometheus at BITLOOP_PROMETHEUS_URL, the prediction log at BITLOOP_PREDICTION_LOG_URL)
and promotes the canary, rolls it back, or waits (`pipeline.loop.decider`). One run at a time; a run
keeps nothing between runs, so one that dies is simply followed by the next, which reads the
same registry. A rollback or promotion updates the `bitloop_champion` asset.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from bitloop_stages import CHAMPION, DEFAULT_ARGS, NEVER_THE_MISSED_RUN, record_success, run_stage


@dag(
    dag_id="rollout",
    schedule=CronTriggerTimetable(
        os.environ.get("BITLOOP_ROLLOUT_SCHEDULE", "* * * * *"),
        timezone="UTC",
        run_immediately=NEVER_THE_MISSED_RUN,
    ),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["bitloop", "rollout"],
    doc_md=__doc__,
)
def rollout() -> None:
    @task(on_success_callback=record_success)
    def decide() -> dict[str, Any]:
        args = ["rollout", "decide"]
        if log := os.environ.get("BITLOOP_PREDICTION_LOG_URL"):
            args += ["--log", log]
        verdict: dict[str, Any] = json.loads(run_stage(*args))
        return verdict

    @task.short_circuit
    def ended(verdict: dict[str, Any]) -> bool:
        """Continue to `emit` only when the canary was promoted or rolled back."""
        return verdict["action"] in ("promote", "rollback")

    @task(outlets=[CHAMPION])
    def emit(verdict: dict[str, Any]) -> dict[str, Any]:
        extra = {key: verdict.get(key) for key in ("version", "stable", "action", "reason")}
        get_current_context()["outlet_events"][CHAMPION].extra = extra
        return extra

    verdict = decide()
    ended(verdict) >> emit(verdict)  # type: ignore[arg-type]  # XComArg resolves to the dict at run time


rollout()

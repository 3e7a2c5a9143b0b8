"""Concept drift, end to end, on the running local stack (`make concept-demo`).

1. The data source's concept moves (`PUT /world`): the same kind of customers now churn for other
   reasons (month-to-month contracts stop predicting churn, long tenure stops protecting), while
   their inputs do not move, so the drift window stays quiet.
2. Customers from that world are scored with their ids; their outcomes are released a few seconds
   later, and the ground_truth DAG sends them to the model server's /feedback.
3. Live quality falls: the champion's live ROC AUC drops below its holdout figure less
   quality.max_drop, which BitloopLiveQualityBelowHoldout compares (it fires once that has held for
   10 minutes); the DAG's `judge` finds the breach and, as the retraining policy allows, updates the
   `bitloop_quality` asset, which schedules training (a signal the cooldown holds back is shown, and
   the demo starts the run the policy would start later).
4. Training on the newest batches learns the new concept (a candidate trained while the window
   still holds the old concept may lose to the champion on the same holdout: the champion stays
   and the window moves on); the loop repeats until the served champion's live quality holds,
   within `retrain.window_batches` retrains. Every step is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from core.params import load_params
from ops.local.airflow_api import airflow_client, trigger_dag, wait_dag_run
from ops.local.drift_demo import (
    PARAMS,
    asset_triggered_run,
    fetch,
    follow_training,
    restore_world,
    send_traffic,
    serve_new_champion,
    start_held_back_run,
    step,
)
from ops.local.settings import StackSettings


def champion_quality(client: httpx.Client, api: str, version: str) -> dict[str, Any]:
    """The served champion's entry in /performance, evaluated now."""
    report = fetch(client, "GET", f"{api}/performance", params={"fresh": True}).json()
    found = [v for v in report["versions"] if v["version"] == version and v["variant"] == "champion"]
    if not found:
        raise SystemExit(f"/performance has no figures for version {version}: were its answers logged?")
    entry: dict[str, Any] = found[0]
    return entry


def show_quality(entry: dict[str, Any], started: float) -> None:
    realized, holdout, estimated = entry["realized"], entry["holdout"], entry["estimated"]
    step(
        started,
        f"live quality of version {entry['version']}: {entry['labelled']} of {entry['predictions']} "
        f"predictions labelled",
    )
    for metric in ("roc_auc", "accuracy"):
        if metric in realized:
            print(
                f"  {metric:<9} live {realized[metric]:.3f}   holdout {holdout.get(metric, float('nan')):.3f}"
                f"   estimated before labels {estimated.get(metric, float('nan')):.3f}",
                flush=True,
            )
    for breach in entry["breaches"]:
        print(f"  breach: {breach}", flush=True)


def quality_round(
    client: httpx.Client,
    airflow: httpx.Client,
    settings: StackSettings,
    delay: float,
    deadline: float,
    started: float,
) -> bool:
    """One pass: outcomes in, the champion's live quality judged, the retrain it calls for; False
    when its live quality holds."""
    api = f"http://127.0.0.1:{settings.api_port}"
    served = fetch(client, "GET", f"{api}/model").json()["version"]
    time.sleep(delay + 1.0)  # the world releases the outcomes
    triggered_at = datetime.now(UTC)
    run_id = trigger_dag(airflow, "ground_truth", deadline)
    step(started, f"triggered ground_truth run {run_id}")
    states = wait_dag_run(airflow, "ground_truth", run_id, deadline)
    if states["__run__"] != "success":
        raise SystemExit(f"ground_truth failed (tasks: {states}); see Airflow or `make logs`")
    entry = champion_quality(client, api, served)
    show_quality(entry, started)
    if states.get("emit") == "success":
        step(started, "ground_truth found live quality past its limits and updated the bitloop_quality asset")
        follow_training(airflow, asset_triggered_run(airflow, triggered_at, deadline), deadline, started)
        return True
    if entry["breaches"]:
        start_held_back_run(airflow, "live quality is past its limits", deadline, started)
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(prog="make concept-demo", description=__doc__)
    parser.add_argument("--rows", type=int, default=4000, help="customers scored per round")
    parser.add_argument("--delay", type=float, default=5.0, help="seconds until the world releases outcomes")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds to wait for the whole loop")
    args = parser.parse_args()
    settings = StackSettings()
    window = load_params(PARAMS).retrain.window_batches
    api = f"http://127.0.0.1:{settings.api_port}"
    source = f"http://127.0.0.1:{settings.data_source_port}"
    started = time.monotonic()
    deadline = started + args.timeout
    key = os.environ.get("BITLOOP_API_API_KEY")
    retrains = 0
    with httpx.Client(timeout=60, headers={"X-API-Key": key} if key else {}) as client:
        model = fetch(client, "GET", f"{api}/model").json()["name"]
        world = restore_world(client, source, model, started)
        concept = world["drift"] if world["concept"] is None else world["concept"]
        target = 0.0 if concept >= 0.5 else 1.0
        change = {"concept": target, "outcome_delay_seconds": args.delay}
        fetch(client, "PUT", f"{source}/world", json=change)
        step(
            started,
            f"the world's concept moved from {concept:g} to {target:g}; "
            f"its inputs (drift {world['drift']:g}) did not",
        )
        with airflow_client(settings) as airflow:
            while True:
                served = fetch(client, "GET", f"{api}/model").json()["version"]
                send_traffic(client, source, api, args.rows, started)
                report = fetch(client, "GET", f"{api}/drift", params={"fresh": True}).json()
                step(
                    started,
                    f"the model server's drift window: {report['status']} "
                    f"(share {report['drift_share']:.0%})",
                )
                if not quality_round(client, airflow, settings, args.delay, deadline, started):
                    if retrains == 0:
                        raise SystemExit(
                            f"version {served}'s live quality held after the concept moved to {target:g}: "
                            "the champion already fits that concept, so the loop had nothing to do "
                            "(see `GET /world`)"
                        )
                    step(
                        started,
                        f"restored: version {served}'s live quality holds after {retrains} "
                        f"retrain{'s' if retrains != 1 else ''} (training window: {window} batches)",
                    )
                    break
                # The bound is checked on the evidence: the round has just judged the last retrain.
                if window is not None and retrains >= window:
                    raise SystemExit(
                        f"live quality still falls after {retrains} retrains with a {window}-batch window "
                        f"(version {served} served)"
                    )
                retrains += 1
                serve_new_champion(client, airflow, source, api, served, args.rows, deadline, started)
    print(
        "\nWhere to look:\n"
        f"  API         {api}/performance  (live, holdout and estimated quality per version)\n"
        f"  Prometheus  http://127.0.0.1:{settings.prometheus_port}/graph?g0.expr=bitloop_live_quality"
        "  (and ALERTS)\n"
        f"  Airflow     http://127.0.0.1:{settings.airflow_port}/dags/ground_truth  and /dags/training\n"
        f"The world keeps its concept; `curl -X PUT {source}/world -H 'content-type: application/json' "
        f"-d '{{\"concept\": {concept:g}}}'` moves it back.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

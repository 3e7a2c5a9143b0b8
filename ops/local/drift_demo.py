"""The closed loop, end to end, on the running local stack (`make drift-demo`), until it converges.

1. The data source's world drifts (`PUT /world`): fresh batches now come from a changed population.
2. Drifted traffic from that world goes to the model server, which logs every prediction.
3. The drift_monitor DAG compares the logged inputs with the champion's reference profile; on
   dataset drift, as the retraining policy allows, it updates the `bitloop_drift` asset.
4. The asset schedules the training DAG, which ingests a fresh (drifted) batch, trains on the
   newest `retrain.window_batches` batches, and promotes a candidate that beats the champion on
   the same holdout (while the window still holds old-world data it may not: the champion stays,
   and the next batch tips the window).
5. The model server picks up the new @champion; steps 2-5 repeat until the monitor is quiet,
   which the training window bounds: at most `retrain.window_batches` retrains. A drift signal
   the policy's cooldown holds back is shown, and the demo starts the run the policy would start
   once the cooldown ends (a manual run always runs).
Every step is timed; the drift scores and each new version are printed with where to look.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from core.params import load_params
from core.registry import Tags, connect
from core.settings import PipelineSettings
from ops.local.airflow_api import airflow_client, trigger_dag, wait_dag_run
from ops.local.settings import StackSettings
from pipeline.workspace import params_file

PARAMS = params_file(Path(__file__).resolve().parents[2])


def step(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)


def fetch(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        answer = client.request(method, url, **kwargs)
    except httpx.HTTPError as err:
        raise SystemExit(f"{url} is not reachable ({err}): start the stack with `make up`") from None
    if answer.status_code >= 400:
        raise SystemExit(f"{method} {url} answered {answer.status_code}: {answer.text[:500]}")
    return answer


def last_drawn_world(model: str) -> dict[str, float] | None:
    """The world the raw store's newest batch was drawn from (drift, and concept when it was moved
    apart): the world the loop last trained on. None without a simulated batch."""
    from pipeline.data.store import read_manifest
    from pipeline.workspace import Workspace

    batches = read_manifest(Workspace(PARAMS.parent, model).raw_dir)
    drawn = [b["source"] for b in batches if b.get("source", {}).get("source") == "simulated"]
    if not drawn:
        return None
    newest = drawn[-1]
    concept = newest.get("concept")
    return {
        "drift": float(newest["drift"]),
        "concept": float(newest["drift"] if concept is None else concept),
    }


def restore_world(client: httpx.Client, source: str, model: str, started: float) -> dict[str, Any]:
    """The data source's world, set back to the one the loop last trained on when it differs: a demo
    that moved a world the champion never saw would report a loop that never had to act.

    The local stack keeps the world across restarts (`--world-file`); it can still differ after a
    `PUT /world` by hand or a stack started before it kept it."""
    world: dict[str, Any] = fetch(client, "GET", f"{source}/world").json()
    concept = world["drift"] if world["concept"] is None else world["concept"]
    trained = last_drawn_world(model)
    if trained is None or (world["drift"], concept) == (trained["drift"], trained["concept"]):
        return world
    step(
        started,
        f"the data source's world (drift {world['drift']:g}, concept {concept:g}) is not the one the "
        f"newest training batch came from (drift {trained['drift']:g}, concept {trained['concept']:g}): "
        "setting it back before the demo moves it",
    )
    restored = {"drift": trained["drift"], "concept": trained["concept"]}
    result: dict[str, Any] = fetch(client, "PUT", f"{source}/world", json=restored).json()
    return result


def send_traffic(client: httpx.Client, source: str, api: str, rows: int, started: float) -> None:
    """Customers from the (drifted) world, scored by the model server in batches of 500 with their
    ids, so the ground_truth DAG can bring their outcomes back later."""
    csv = fetch(client, "GET", f"{source}/customers", params={"n": rows, "seed": int(time.time())}).text
    frame = pd.read_csv(io.StringIO(csv))
    ids = frame.pop("customer_id").tolist()
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    for start in range(0, len(records), 500):
        body = {"records": records[start : start + 500], "ids": ids[start : start + 500]}
        fetch(client, "POST", f"{api}/predict/batch", json=body)
        step(started, f"  sent {min(start + 500, len(records))}/{len(records)} customers")


def show_drift(report: dict[str, Any]) -> None:
    print(f"  {'feature':<18}{'test':<15}{'score':>8}{'threshold':>11}{'PSI':>8}  drifted", flush=True)
    for f in report["features"]:
        score = "-" if f["score"] is None else f"{f['score']:.3f}"
        psi = "-" if f["psi"] is None else f"{f['psi']:.3f}"
        threshold = "-" if f["threshold"] is None else f"{f['threshold']:g}"
        drifted = "yes" if f["drifted"] else "no"
        print(f"  {f['name']:<18}{f['method']:<15}{score:>8}{threshold:>11}{psi:>8}  {drifted}", flush=True)
    print(
        f"  drift share {report['drift_share']:.0%} (threshold {report['threshold_share']:.0%})", flush=True
    )


def asset_triggered_run(airflow: httpx.Client, after: datetime, deadline: float) -> str:
    """The training run the drift asset scheduled after `after`."""
    while True:
        runs = airflow.get(
            "/api/v2/dags/training/dagRuns", params={"order_by": "-run_after", "limit": 5}
        ).json()["dag_runs"]
        for run in runs:
            if run["run_type"] == "asset_triggered" and datetime.fromisoformat(run["run_after"]) >= after:
                return str(run["dag_run_id"])
        if time.monotonic() > deadline:
            raise SystemExit("the drift asset did not schedule the training DAG; see `make logs`")
        time.sleep(3.0)


def follow_training(airflow: httpx.Client, run_id: str, deadline: float, started: float) -> None:
    step(started, f"training run {run_id}")
    if wait_dag_run(airflow, "training", run_id, deadline)["__run__"] != "success":
        raise SystemExit(f"training run {run_id} failed; see Airflow or `make logs`")
    step(started, "training finished")


def start_held_back_run(airflow: httpx.Client, finding: str, deadline: float, started: float) -> None:
    """A signal the retraining policy held back: say so, and start the run it would start once the
    cooldown ends (a manual run always runs)."""
    cooldown = load_params(PARAMS).retrain.cooldown_hours
    step(
        started,
        f"{finding}; the retraining policy held the signal back "
        f"(retrain.cooldown_hours={cooldown:g}: one drift- or quality-started run per period). "
        "The demo starts the run it would start when the cooldown ends",
    )
    follow_training(airflow, trigger_dag(airflow, "training", deadline), deadline, started)


def serve_new_champion(
    client: httpx.Client,
    airflow: httpx.Client,
    source: str,
    api: str,
    served: str,
    rows: int,
    deadline: float,
    started: float,
) -> str:
    """After a retrain: follow the winner's rollout, if it started one; the version served then.

    A winner starts as the canary of the served version (`rollout.share` of traffic): customers are
    sent and the rollout DAG asked to decide until it promotes the canary or rolls it back. A
    candidate trained while the window still holds a batch of the old world may not win at all on
    the same holdout, part of which the champion still fits: the champion stays and the next batch
    tips the window. The loop's bound (`retrain.window_batches` retrains) counts such a run too.
    """
    fetch(client, "POST", f"{api}/admin/reload")
    shown = fetch(client, "GET", f"{api}/model").json()
    if (rollout := shown.get("rollout")) is not None:
        step(
            started,
            f"version {rollout['canary_version']} answers {rollout['canary_share']:.0%} of traffic as the "
            f"canary of version {rollout['stable_version']}: promoted after {rollout['min_requests']} canary "
            "records if it holds every SLO, rolled back if it does not",
        )
        while (rollout := fetch(client, "GET", f"{api}/model").json().get("rollout")) is not None:
            send_traffic(client, source, api, rows, started)
            run_id = trigger_dag(airflow, "rollout", deadline)
            if wait_dag_run(airflow, "rollout", run_id, deadline)["__run__"] != "success":
                raise SystemExit(f"rollout run {run_id} failed; see Airflow or `make logs`")
            fetch(client, "POST", f"{api}/admin/reload")
        last = fetch(client, "GET", f"{api}/model").json()["last_rollout"]
        step(started, f"rollout of version {last['version']}: {last['outcome']} ({last['reason']})")
    after = str(fetch(client, "GET", f"{api}/model").json()["version"])
    if after == served and rollout is None and shown.get("rollout") is None:
        step(
            started,
            f"the candidate did not beat version {served} on the same holdout, part of which still "
            "follows the old world: the champion stays, the window moves on "
            "(reports/<model.name>/promotion.json says by how much)",
        )
    elif after != served:
        step(started, f"the model server now serves version {after} (was {served})")
    return after


def monitor_found_drift(settings: StackSettings, model: str, run_id: str) -> bool:
    """The verdict the drift_monitor run logged to MLflow (no report: too few rows, no drift)."""
    client = connect(PipelineSettings(mlflow_tracking_uri=f"http://127.0.0.1:{settings.mlflow_port}"))
    experiment = client.get_experiment_by_name(f"{model}-monitoring")
    if experiment is None:
        return False
    found = client.search_runs(
        [experiment.experiment_id], f"tags.`{Tags.DRIFT_OF}` = '{run_id}'", max_results=1
    )
    return bool(found) and found[0].data.tags.get(Tags.DATASET_DRIFT) == "true"


def retrain_round(
    client: httpx.Client,
    airflow: httpx.Client,
    settings: StackSettings,
    model: str,
    deadline: float,
    started: float,
) -> bool:
    """One pass of the loop: the drift monitor's verdict, and the retrain it calls for; False when
    the monitor is quiet."""
    api = f"http://127.0.0.1:{settings.api_port}"
    report = fetch(client, "GET", f"{api}/drift", params={"fresh": True}).json()
    step(started, f"the model server's sliding window: {report['status']}")
    show_drift(report)
    triggered_at = datetime.now(UTC)
    run_id = trigger_dag(airflow, "drift_monitor", deadline)
    step(started, f"triggered drift_monitor run {run_id}")
    states = wait_dag_run(airflow, "drift_monitor", run_id, deadline)
    if states["__run__"] != "success":
        raise SystemExit(f"drift_monitor failed (tasks: {states}); see Airflow or `make logs`")
    if states.get("emit") == "success":
        step(started, "drift_monitor found dataset drift and updated the bitloop_drift asset")
        follow_training(airflow, asset_triggered_run(airflow, triggered_at, deadline), deadline, started)
        return True
    if monitor_found_drift(settings, model, run_id):
        start_held_back_run(airflow, "drift_monitor found dataset drift", deadline, started)
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(prog="make drift-demo", description=__doc__)
    parser.add_argument(
        "--drift",
        type=float,
        default=1.0,
        help="the world's new drift level (0-1); when the world is there already, it drifts back to 1 - this",
    )
    parser.add_argument("--rows", type=int, default=3000, help="drifted rows of live traffic per round")
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
        before = fetch(client, "GET", f"{api}/model").json()
        step(started, f"serving {before['name']} version {before['version']}")
        world = restore_world(client, source, before["name"], started)
        target = args.drift if abs(world["drift"] - args.drift) > 1e-9 else 1.0 - args.drift
        fetch(client, "PUT", f"{source}/world", json={"drift": target})
        step(started, f"the data source's world drifted from {world['drift']:g} to {target:g}")
        with airflow_client(settings) as airflow:
            while True:
                send_traffic(client, source, api, args.rows, started)
                served = fetch(client, "GET", f"{api}/model").json()["version"]
                if not retrain_round(client, airflow, settings, before["name"], deadline, started):
                    if retrains == 0:
                        raise SystemExit(
                            f"drift_monitor found no drift after the world moved to {target:g}: the champion "
                            "already fits that world, so the loop had nothing to do (see `GET /world`)"
                        )
                    step(
                        started,
                        f"converged: drift_monitor is quiet against version {served} after {retrains} "
                        f"retrain{'s' if retrains != 1 else ''} (training window: {window} batches)",
                    )
                    break
                # The bound is checked on the evidence: the monitor has just judged the last retrain.
                if window is not None and retrains >= window:
                    raise SystemExit(
                        f"still drifting after {retrains} retrains with a {window}-batch window "
                        f"(version {served} served)"
                    )
                retrains += 1
                serve_new_champion(client, airflow, source, api, served, args.rows, deadline, started)
    print(
        "\nWhere to look:\n"
        f"  Prometheus  http://127.0.0.1:{settings.prometheus_port}/graph?g0.expr=bitloop_drift_score"
        "  (also ALERTS, bitloop_model_version)\n"
        f"  Airflow     http://127.0.0.1:{settings.airflow_port}/dags/drift_monitor  and /dags/training\n"
        f"  MLflow      http://127.0.0.1:{settings.mlflow_port}  experiments "
        f"'{before['name']}-monitoring' (drift reports) and '{before['name']}' (training)\n"
        f"  API         {api}/drift  (the sliding window now compares with the new champion)\n"
        f"The data source stays drifted (and stays so across `make down && make up`); `curl -X PUT "
        f"{source}/world -H 'content-type: application/json' -d '{{\"drift\": {world['drift']:g}}}'` "
        "moves it back.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

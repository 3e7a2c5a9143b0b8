"""The closed loop, end to end, on the running local stack (`make drift-demo`).

1. The data source's world drifts (`PUT /world`): fresh batches now come from a changed population.
2. Drifted traffic from that world goes to the model server, which logs every prediction.
3. The drift_monitor DAG compares the logged inputs with the champion's reference profile; on
   dataset drift it updates the `bitloop_drift` asset.
4. The asset schedules the training DAG, which ingests a fresh (drifted) batch, trains, and
   promotes a candidate that beats the champion on the same holdout.
5. The model server picks up the new @champion.
Every step is timed; the drift scores and the new version are printed with where to look.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd

from ops.local.airflow_api import airflow_client, trigger_dag, wait_dag_run
from ops.local.settings import StackSettings


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
        step(started, f"  sent {min(start + 500, len(records))}/{len(records)} drifted rows")


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


def main() -> int:
    parser = argparse.ArgumentParser(prog="make drift-demo", description=__doc__)
    parser.add_argument("--drift", type=float, default=1.0, help="the world's new drift level (0-1)")
    parser.add_argument("--rows", type=int, default=3000, help="drifted rows of live traffic to send")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the whole loop")
    args = parser.parse_args()
    settings = StackSettings()
    api = f"http://127.0.0.1:{settings.api_port}"
    source = f"http://127.0.0.1:{settings.data_source_port}"
    started = time.monotonic()
    deadline = started + args.timeout
    key = os.environ.get("BITLOOP_API_API_KEY")
    with httpx.Client(timeout=60, headers={"X-API-Key": key} if key else {}) as client:
        before = fetch(client, "GET", f"{api}/model").json()
        step(started, f"serving {before['name']} version {before['version']}")
        fetch(client, "PUT", f"{source}/world", json={"drift": args.drift})
        step(started, f"the data source's world drifted to {args.drift}")
        send_traffic(client, source, api, args.rows, started)
        report = fetch(client, "GET", f"{api}/drift", params={"fresh": True}).json()
        step(started, f"the model server's sliding window: {report['status']}")
        show_drift(report)

        with airflow_client(settings) as airflow:
            triggered_at = datetime.now(UTC)
            run_id = trigger_dag(airflow, "drift_monitor", deadline)
            step(started, f"triggered drift_monitor run {run_id}")
            states = wait_dag_run(airflow, "drift_monitor", run_id, deadline)
            if states["__run__"] != "success" or states.get("emit") != "success":
                raise SystemExit(f"drift_monitor did not emit the drift asset (tasks: {states})")
            step(started, "drift_monitor found dataset drift and updated the bitloop_drift asset")
            training = asset_triggered_run(airflow, triggered_at, deadline)
            step(started, f"the asset scheduled training run {training}")
            if wait_dag_run(airflow, "training", training, deadline)["__run__"] != "success":
                raise SystemExit(f"training run {training} failed; see Airflow or `make logs`")
            step(started, "training finished")

        fetch(client, "POST", f"{api}/admin/reload")
        after = fetch(client, "GET", f"{api}/model").json()
        if after["version"] == before["version"]:
            raise SystemExit(
                "training finished but no new champion was promoted: see reports/<model.name>/promotion.json "
                "(the candidate must beat the champion on the same holdout)"
            )
        step(started, f"the model server now serves version {after['version']} (was {before['version']})")
    print(
        "\nWhere to look:\n"
        f"  Prometheus  http://127.0.0.1:{settings.prometheus_port}/graph?g0.expr=bitloop_drift_score"
        "  (also ALERTS, bitloop_model_version)\n"
        f"  Airflow     http://127.0.0.1:{settings.airflow_port}/dags/drift_monitor  and /dags/training\n"
        f"  MLflow      http://127.0.0.1:{settings.mlflow_port}  experiments "
        f"'{before['name']}-monitoring' (drift reports) and '{before['name']}' (training)\n"
        f"  API         {api}/drift  (the sliding window now compares with the new champion)\n"
        f"The data source stays drifted; `curl -X PUT {source}/world -H 'content-type: application/json' "
        "-d '{\"drift\": 0}'` restores it.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

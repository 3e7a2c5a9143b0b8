"""Airflow's REST API as the local stack uses it: log in, trigger a DAG run once, follow it to the end.

`make up` runs the training DAG through it; the drift demo and `make screenshots` use it too.
Written by hand: three calls (a token, a run, its state), where Airflow's generated client
(`apache-airflow-client`) is another package pinned to the server's exact version.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx

from ops.local.settings import StackSettings, airflow_secrets


class _AirflowTransport(httpx.HTTPTransport):
    """Airflow not answering (refused, timed out, cut off) as one line naming it and where to look,
    instead of a traceback from deep inside a demo or `make up`."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.TransportError as err:
            raise SystemExit(
                f"Airflow did not answer {request.method} {request.url} "
                f"({type(err).__name__}: {err or 'no detail'}); see `make logs` (airflow-api)"
            ) from None


def airflow_client(settings: StackSettings, password: str | None = None) -> httpx.Client:
    """An authenticated client for Airflow's REST API (token from the admin login; `password`
    defaults to the one the local stack generated)."""
    base = f"http://127.0.0.1:{settings.airflow_port}"
    password = password or airflow_secrets(settings)["admin_password"]
    with httpx.Client(base_url=base, timeout=30, transport=_AirflowTransport()) as login:
        token = login.post("/auth/token", json={"username": "admin", "password": password})
        token.raise_for_status()
    return httpx.Client(
        base_url=base,
        timeout=30,
        transport=_AirflowTransport(),
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
    )


def trigger_dag(airflow: httpx.Client, dag_id: str, deadline: float) -> str:
    """Trigger a run once Airflow has parsed the DAG; returns the run id."""
    while airflow.get(f"/api/v2/dags/{dag_id}").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"Airflow never listed the {dag_id} DAG; see `make logs` (airflow-dag-processor)"
            )
        print(f"  waiting for Airflow to parse the {dag_id} DAG", flush=True)
        time.sleep(3.0)
    # The run is named here, so retrying after a server error cannot start a second run: a retry
    # whose first attempt did create it gets 409 for that same name.
    run_id = f"manual__{datetime.now(UTC).isoformat()}"
    body = {"dag_run_id": run_id, "logical_date": None}
    for attempt in range(1, 4):
        run = airflow.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        if run.status_code == 409 and attempt > 1:
            return run_id  # the attempt that answered 5xx had started it after all
        if run.status_code < 500:
            run.raise_for_status()
            return run_id
        print(f"  Airflow answered {run.status_code} to the trigger (attempt {attempt}): {run.text[:300]}")
        if time.monotonic() > deadline:
            break
        time.sleep(5.0)
    raise SystemExit(f"Airflow could not start a {dag_id} run: see `make logs` (airflow-api)")


def wait_dag_run(airflow: httpx.Client, dag_id: str, run_id: str, deadline: float) -> dict[str, str]:
    """Wait for a DAG run to finish, showing progress; returns the final state of each task."""
    state = "queued"
    while True:
        state = airflow.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        tasks = airflow.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        states = {t["task_id"]: str(t["state"]) for t in tasks.get("task_instances", [])}
        done = sum(s in ("success", "skipped") for s in states.values())
        print(f"  {dag_id} run {run_id}: {state}, {done}/{len(states)} tasks done", flush=True)
        if state in ("success", "failed"):
            return {"__run__": state, **states}
        if time.monotonic() > deadline:
            raise SystemExit(f"{dag_id} run {run_id} did not finish in time; see `make logs`")
        time.sleep(5.0)


def training_dag_id(model: str, default: bool) -> str:
    """The training DAG of a model params.yaml declares: `training` for the default model (`model.name`),
    `training.<name>` for one under `models:` (as dags/bitloop_stages.py names them)."""
    return "training" if default else f"training.{model}"


def run_training_dags(settings: StackSettings, dag_ids: list[str], password: str | None = None) -> list[str]:
    """Trigger one run of each training DAG, all at once, and wait for them; returns their run ids.

    The runs of different models overlap in Airflow; their `dvc repro` steps take turns on the
    project's lock (pipeline/driver/versioning.py), so only the waiting between steps is shared."""
    deadline = time.monotonic() + settings.training_timeout
    with airflow_client(settings, password) as airflow:
        runs = {dag_id: trigger_dag(airflow, dag_id, deadline) for dag_id in dag_ids}
        failed = [
            f"{dag_id} DAG run {run_id}"
            for dag_id, run_id in runs.items()
            if wait_dag_run(airflow, dag_id, run_id, deadline)["__run__"] == "failed"
        ]
    if failed:
        raise SystemExit(
            f"{', '.join(failed)} failed: open http://127.0.0.1:{settings.airflow_port} "
            "(login below) or see `make logs`"
        )
    return list(runs.values())


def run_training_dag(settings: StackSettings, dag_id: str = "training", password: str | None = None) -> str:
    """Trigger one run of a training DAG and wait for it; returns its run id."""
    return run_training_dags(settings, [dag_id], password)[0]

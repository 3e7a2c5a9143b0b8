"""The stack scaled out (`make test-scale`): three model-server replicas behind the balancer, two
Celery workers that share no disk, the PostgreSQL prediction log, and faults on each.

A training run loses the worker running its `train` task to SIGKILL: the task is retried on the
other worker and the run promotes, each candidate registered once. With a second model (diabetes)
trained and served beside the first, under steady load on both one replica is killed and another
restarted: no request fails at the balancer and the log holds one row per answer, which the drift
monitor reads from all three replicas.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ops.compose_stack import (
    CHURN_RECORD,
    DIABETES_RECORD,
    Load,
    Stack,
    compose_stack,
    declaring_diabetes,
    replica_get,
    replica_predictions,
    run,
    wait_for,
)

pytestmark = pytest.mark.scale
REPLICAS, WORKERS = 3, 2


def task_instances(stack: Stack, run_id: str) -> dict[str, dict[str, Any]]:
    found = stack.airflow_get(f"dags/training/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {t["task_id"]: t for t in found}


def container_hostname(container: str) -> str:
    return run("podman", "inspect", "--format", "{{.Config.Hostname}}", container).stdout.strip()


def worker_of(stack: Stack, hostname: str) -> str:
    """The worker container whose hostname a task instance recorded."""
    for container in stack.containers("airflow-worker"):
        if hostname.split(".")[0] == container_hostname(container):
            return container
    raise AssertionError(f"no worker container has the hostname {hostname}")


def healthy(container: str) -> bool:
    return subprocess.run(["podman", "healthcheck", "run", container], capture_output=True).returncode == 0


def train_losing_a_worker(stack: Stack) -> tuple[str, set[str]]:
    """A training run whose `train` task loses its worker to SIGKILL; returns the run and the hostnames."""
    run_id = stack.trigger("training")
    running = wait_for(
        lambda: (t := task_instances(stack, run_id)["train"])["state"] == "running" and t["hostname"] and t,
        "the train task running on a worker",
        900,
        every=0.5,
    )
    victim = worker_of(stack, running["hostname"])
    run("podman", "kill", "-s", "KILL", victim)
    state = wait_for(lambda: stack.finished("training", run_id), "the training run after the kill", 900)
    run("podman", "start", victim)
    tasks = task_instances(stack, run_id)
    assert state == "success", {t: (i["state"], i["try_number"], i["hostname"]) for t, i in tasks.items()}
    assert tasks["train"]["try_number"] == 2
    assert tasks["train"]["hostname"] != running["hostname"]
    wait_for(lambda: healthy(victim), "the killed worker back", 180)
    tries = stack.airflow_get(f"dags/training/dagRuns/{run_id}/taskInstances/train/tries")
    assert [t["hostname"] for t in tries["task_instances"]] == [
        running["hostname"],
        tasks["train"]["hostname"],
    ]
    return run_id, {t["hostname"] for t in tasks.values()} | {running["hostname"]}


def through_faults(stack: Stack, replicas: list[str]) -> int:
    """Under steady load on both models, one replica is killed and another restarted; returns the
    answers."""
    diabetes = Load(stack.api, DIABETES_RECORD, path="/models/diabetes/predict")
    with Load(stack.api, CHURN_RECORD) as load, diabetes:
        for replica, kill in zip(replicas, ("KILL", "TERM"), strict=False):
            time.sleep(3)
            if kill == "KILL":
                run("podman", "kill", "-s", "KILL", replica)
                time.sleep(3)
                run("podman", "start", replica)
            else:
                run("podman", "restart", "-t", "20", replica)
            wait_for(lambda r=replica: healthy(r), f"replica {replica} back after SIG{kill}", 120)
        time.sleep(5)  # every replica is in rotation again
    for model in (load, diabetes):
        assert set(model.statuses) == {200}, {s: model.statuses.count(s) for s in set(model.statuses)}
    assert diabetes.statuses
    return len(load.statuses) + len(diabetes.statuses)


@pytest.mark.timeout(3000)
def test_the_scaled_stack_survives_a_lost_worker_and_lost_replicas(tmp_path: Path) -> None:
    params = declaring_diabetes(tmp_path) / "params.yaml"  # two models: the churn classifier and diabetes
    scale = {"api": REPLICAS, "airflow-worker": WORKERS}
    with compose_stack(tmp_path, "bitloop-scale", scale, params=params) as stack:
        # The second model trains meanwhile: its tasks share the workers, the lost one included.
        regression_run = stack.trigger("training.diabetes")
        run_id, hostnames = train_losing_a_worker(stack)
        workers = stack.containers("airflow-worker")
        assert len(workers) == WORKERS
        names = {container_hostname(w) for w in workers}
        assert {h.split(".")[0] for h in hostnames} == names  # tasks of one run ran on both workers
        # No batch or model version twice: one data version, each candidate registered once.
        assert stack.returned("training", run_id, "ingest")["version"] == "v1"
        mlflow = stack.url("MLFLOW")
        versions = httpx.get(
            f"{mlflow}/api/2.0/mlflow/model-versions/search",
            params={"filter": "name='bitloop-churn'"},
            auth=stack.mlflow_login,
            timeout=10,
        ).json()["model_versions"]
        candidates = [
            next(t["value"] for t in v["tags"] if t["key"] == "bitloop.candidate") for v in versions
        ]
        assert len(candidates) == len(set(candidates)) >= 1, candidates
        champion = httpx.get(
            f"{mlflow}/api/2.0/mlflow/registered-models/alias",
            params={"name": "bitloop-churn", "alias": "champion"},
            auth=stack.mlflow_login,
            timeout=10,
        ).json()["model_version"]["version"]

        replicas = stack.containers("api")
        assert len(replicas) == REPLICAS
        for replica in replicas:  # each finds the champion by polling the registry
            readiness: dict[str, Any] = {}

            def serving(r: str = replica, seen: dict[str, Any] = readiness) -> bool:
                seen.update(json.loads(replica_get(r, "/ready")))
                return bool(seen["ready"]) and seen["model_version"] == champion

            try:
                wait_for(serving, f"replica {replica} serving the champion", 120)
            except AssertionError as err:
                raise AssertionError(f"{err}; its last /ready: {readiness}") from None

        assert (
            wait_for(lambda: stack.finished("training.diabetes", regression_run), "diabetes' training", 900)
            == "success"
        )
        for replica in replicas:
            wait_for(
                lambda r=replica: json.loads(replica_get(r, "/models/diabetes/ready"))["ready"],
                f"replica {replica} serving diabetes' champion",
                120,
            )

        def spread() -> bool:
            """Requests reach every replica (the balancer adds one two checks after its /ready says 200)."""
            with httpx.Client(base_url=stack.api, timeout=30) as client:
                for _ in range(10):
                    assert client.post("/predict", json=CHURN_RECORD).status_code == 200
            return all(replica_predictions(r) > 0 for r in replicas)

        wait_for(spread, "requests through the balancer reaching every replica", 60, every=1)
        rows = "SELECT COUNT(*) FROM predictions"
        before = int(stack.psql(rows))
        answered = through_faults(stack, replicas)
        # The killed replica's answers not yet written waited in its spill and were written at restart.
        wait_for(lambda: int(stack.psql(rows)) == before + answered, "one logged row per answer", 60)

        # The drift monitor reads what all three replicas wrote.
        served = int(stack.psql(f"{rows} WHERE model_name = 'bitloop-churn' AND variant != 'shadow'"))
        drift_run = stack.trigger("drift_monitor")
        assert (
            wait_for(lambda: stack.finished("drift_monitor", drift_run), "the drift monitor", 300)
            == "success"
        )
        assert stack.returned("drift_monitor", drift_run, "detect")["rows"] == min(served, 5000)
        print(f"timings (s): {stack.timings}\nanswers through the balancer during the faults: {answered}")

"""The containerised stack end to end (`make test-compose`): build, compose up, smoke test, tear down.

How the stack is built and run under podman: tests/ops/compose_stack.py.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import httpx
import pytest

from ops.local.compose import first_champions
from ops.local.settings import StackSettings
from tests.factories import PROJECT
from tests.ops.compose_stack import (
    BASE,
    CHURN_RECORD,
    compose_stack,
    run,
    wait_for,
)
from tests.tools import require

pytestmark = pytest.mark.compose


@pytest.mark.timeout(2400)
def test_the_compose_stack_serves_a_champion_trained_by_airflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with compose_stack(tmp_path, "bitloop-test", {"api": 2, "airflow-worker": 2}) as stack:
        # The model server and the data source carry the MLflow client only, never its server (with
        # the full MLflow both were 904 MB on this Debian base). The model server also carries ONNX
        # Runtime (69 MB of native code) and onnx, which checks each compiled graph (with ml_dtypes,
        # 37 MB once its test data is dropped), and pyarrow for Arrow batches (117 MB without Flight
        # and headers): about 820 MB.
        assert stack.sizes["api"] < 840, stack.sizes
        assert stack.sizes["datasource"] < 800, stack.sizes
        api, mlflow, prometheus = stack.api, stack.url("MLFLOW"), stack.url("PROMETHEUS")
        # `make up`'s own first training on the compose stack, with the stack's logins: one run of
        # the training DAG, then the model server serves its champion (test-scale runs two models).
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(name, "")  # first_champions sets them for this process; restored after
        settings = StackSettings(
            state_dir=tmp_path / "state",
            secrets_dir=stack.secrets_dir,
            api_port=stack.ports["API"],
            mlflow_port=stack.ports["MLFLOW"],
            airflow_port=stack.ports["AIRFLOW"],
        )
        first_champions(settings, "see the containers' logs")
        runs = stack.airflow_get("dags/training/dagRuns")["dag_runs"]
        assert [(r["run_type"], r["state"]) for r in runs] == [("manual", "success")]
        alias = f"{mlflow}/api/2.0/mlflow/registered-models/alias"
        query = {"name": "bitloop-churn", "alias": "champion"}
        champion = httpx.get(alias, params=query, auth=stack.mlflow_login, timeout=10).json()
        champion = champion["model_version"]["version"]
        # MLflow wants a login; a user the admin adds reads but cannot move @champion.
        assert httpx.get(alias, params=query, timeout=10).status_code == 401
        move = {**query, "version": champion}
        assert httpx.post(alias, json=move, timeout=10).status_code == 401
        viewer = ("viewer", secrets.token_urlsafe(16))
        created = httpx.post(
            f"{mlflow}/api/2.0/mlflow/users/create",
            json={"username": viewer[0], "password": viewer[1]},
            auth=stack.mlflow_login,
            timeout=10,
        )
        assert created.status_code == 200, created.text
        assert httpx.get(alias, params=query, auth=viewer, timeout=10).status_code == 200
        assert httpx.post(alias, json=move, auth=viewer, timeout=10).status_code == 403
        httpx.post(f"{api}/admin/reload", timeout=60)
        assert (
            wait_for(lambda: httpx.get(f"{api}/ready", timeout=5).json()["model_version"], "ready", 120)
            == champion
        )
        answer = httpx.post(f"{api}/predict", json=CHURN_RECORD, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion
        # The answer is logged in PostgreSQL's `predictions` database, which every replica and the
        # drift monitor share.
        request_id = answer.json()["request_id"]
        wait_for(
            lambda: request_id in stack.psql("SELECT request_id FROM predictions").split(),
            "the answer in the PostgreSQL prediction log",
            30,
        )

        def scraped() -> bool:
            result = httpx.get(
                f"{prometheus}/api/v1/query", params={"query": 'up{job=~"bitloop-api|mlflow"}'}, timeout=5
            ).json()["data"]["result"]
            return sorted(r["metric"]["job"] + r["value"][1] for r in result) == [
                "bitloop-api1",
                "bitloop-api1",
                "mlflow1",
            ]

        # Both model-server replicas are found by name; MLflow's /metrics is scraped with the
        # password from the secret's file.
        wait_for(scraped, "Prometheus scraping both API replicas and MLflow", 120)
        # No secret is in a container's configuration: environment, command or labels.
        containers = run(
            "podman", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"
        ).stdout.split()
        inspected = run("podman", "inspect", *containers).stdout
        secret_files = list(stack.secrets_dir.iterdir())
        leaked = [p.name for p in secret_files if p.read_text() and p.read_text() in inspected]
        assert leaked == []
        stats = run("podman", "stats", "--no-stream", "--format", "json").stdout
        memory = {s["name"]: s["mem_usage"] for s in json.loads(stats)}
        print(f"image sizes (MB): {stack.sizes}\ntimings (s): {stack.timings}\nmemory: {memory}")


@pytest.mark.repro
@pytest.mark.timeout(1200)
def test_rebuilding_an_image_gives_identical_layers() -> None:
    """A --no-cache build of the model server image has the layer digests of an earlier build.

    The earlier build is a cached one with build.sh's flags: after make test-compose (as in CI) every
    layer comes from that suite's own full build; on its own it is a full build of its own.
    """
    require("podman", install="apt-get install podman")
    run("bash", str(PROJECT / "ops" / "compose" / "base-image.sh"), BASE)
    ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    secret = ["--secret", f"id=ca,src={ca}"] if Path(ca).is_file() else []
    layers = []
    for tag, cache in (("bitloop-api:repro-cached", []), ("bitloop-api:repro-fresh", ["--no-cache"])):
        run(
            "podman", "build", *cache, "--format", "docker", "--timestamp", "0", *secret,
            "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "SOURCE_DATE_EPOCH=0",
            "-f", "ops/docker/Dockerfile", "--target", "api", "-t", tag, ".",
            cwd=PROJECT,
        )  # fmt: skip
        layers.append(run("podman", "image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout)
        run("podman", "rmi", tag)
    assert layers[0] == layers[1]

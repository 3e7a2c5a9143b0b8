"""Three models on one local stack, as README "Several models" declares them and walks through:
the churn classifier (the default model), scikit-learn's diabetes regression and a three-class
classifier read from a CSV file. `make up` trains each and one model server serves all three; a
drift on two of them retrains those two only, each through its own DAGs; the one whose retrain
wins starts as its canary under load while the others answer with their champions.

The stack runs from a copy of the project whose params.yaml declares the two models (the
checkout's own params.yaml, and its git status, stay as they are); the copy shares the checkout's
virtual environment, and PYTHONPATH points every process at the copy's code.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from ops.local.airflow_api import airflow_client, trigger_dag, wait_dag_run
from ops.local.settings import StackSettings
from pipeline.data.sources.bundled import load_bundled
from pipeline.data.store import read_manifest
from tests.api.traffic import Traffic, wait_for
from tests.factories import PROJECT
from tests.ops.test_stack import _service_errors, make
from tests.servers import free_port

pytestmark = pytest.mark.stack

CHURN = "bitloop-churn"
DECLARED = ("diabetes", "wine")
PORTS = ("MLFLOW", "DATA_SOURCE", "API", "AIRFLOW", "AIRFLOW_EXECUTION", "PROMETHEUS", "PUSHGATEWAY")


def project_copy(into: Path) -> Path:
    """The project's tracked files as the working tree has them, beside the checkout's venv."""
    listed = subprocess.run(
        ["git", "-C", str(PROJECT), "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = PROJECT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)  # mtimes kept: make sees the venv as current
    (into / ".venv").symlink_to(PROJECT / ".venv")
    return into


def readme_walkthrough() -> tuple[dict[str, Any], str]:
    """The `models:` example and the command that writes wine.csv, as README "Several models" has them."""
    text = (PROJECT / "README.md").read_text()
    section = text[text.index("### Several models") : text.index("### One server for every model")]
    blocks = re.findall(r"```(yaml|bash)\n(.*?)```", section, flags=re.DOTALL)
    models: dict[str, Any] = yaml.safe_load(next(b for kind, b in blocks if kind == "yaml"))["models"]
    command = next(
        line for kind, b in blocks if kind == "bash" for line in b.splitlines() if "wine.csv" in line
    )
    return models, command


def shifted(frame: pd.DataFrame, target: str, rows: int) -> pd.DataFrame:
    """`rows` rows of `frame` with every feature moved three standard deviations up: a changed world."""
    sample = frame.sample(n=rows, replace=rows > len(frame), random_state=7).reset_index(drop=True)
    features = [c for c in sample.columns if c != target]
    sample[features] = sample[features] + 3 * frame[features].std()
    return sample


def dag_runs(airflow: httpx.Client, dag_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = airflow.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["dag_runs"]
    return found


@pytest.mark.timeout(2400)
def test_three_models_train_serve_drift_and_retrain_each_on_its_own(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    models, write_csv = readme_walkthrough()
    assert sorted(models) == list(DECLARED)
    with (project / "params.yaml").open("a") as params:
        params.write("\n" + yaml.safe_dump({"models": models}, sort_keys=False))
    ports = {name: free_port() for name in PORTS}
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "BITLOOP_STATE_DIR": str(tmp_path / "state"),
        "BITLOOP_PROCESS_EXPORTER_PORT": str(free_port()),
        **{f"BITLOOP_{name}_PORT": str(port) for name, port in ports.items()},
    }
    api = f"http://127.0.0.1:{ports['API']}"
    subprocess.run(["bash", "-c", write_csv], cwd=project, env=env, check=True, timeout=120)
    csv = project / "wine.csv"
    wine = pd.read_csv(csv)
    try:
        up = make("up", env, timeout=1200, project=project)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:] + _service_errors(tmp_path / "state")
        for name in (CHURN, *DECLARED):
            assert f"no champion of {name} yet: running its training DAG" in up.stdout
        registry = MlflowClient(f"http://127.0.0.1:{ports['MLFLOW']}")
        champions = {
            name: registry.get_model_version_by_alias(name, "champion").version for name in (CHURN, *DECLARED)
        }

        # One model server serves all three, each under its name, the default one at the root too.
        served = {m["name"]: m for m in httpx.get(f"{api}/models", timeout=10).json()["models"]}
        assert {name: (m["state"], m["task"], m["version"]) for name, m in served.items()} == {
            CHURN: ("serving", "classification", champions[CHURN]),
            "diabetes": ("serving", "regression", champions["diabetes"]),
            "wine": ("serving", "classification", champions["wine"]),
        }
        diabetes = load_bundled("diabetes", "progression")
        records: dict[str, dict[str, Any]] = {
            "diabetes": {
                str(k): v
                for k, v in diabetes.drop(columns="progression").to_dict(orient="records")[0].items()
            },
            "wine": {
                str(k): v for k, v in wine.drop(columns="cultivar").to_dict(orient="records")[0].items()
            },
        }
        answer = httpx.post(f"{api}/models/wine/predict", json=records["wine"], timeout=10).json()
        assert answer["prediction"] in set(wine["cultivar"])
        answer = httpx.post(f"{api}/models/diabetes/predict", json=records["diabetes"], timeout=10).json()
        assert isinstance(answer["prediction"], float)
        assert httpx.get(f"{api}/model", timeout=10).json()["name"] == CHURN

        # Live traffic: the churn customers from the world the champion was trained on, the other two
        # from a changed world; the wine CSV gets that world's rows too, for the next ingest.
        source = f"http://127.0.0.1:{ports['DATA_SOURCE']}"
        customers = pd.read_csv(
            io.StringIO(httpx.get(f"{source}/customers", params={"n": 400, "seed": 11}, timeout=30).text)
        )
        ids = customers.pop("customer_id").astype(str).tolist()
        churn_rows: list[dict[str, Any]] = (
            customers.astype(object).where(customers.notna(), None).to_dict(orient="records")  # type: ignore[assignment]
        )
        sent = httpx.post(f"{api}/predict/batch", json={"records": churn_rows, "ids": ids}, timeout=60)
        assert sent.status_code == 200, sent.text
        moved = {"diabetes": shifted(diabetes, "progression", 400), "wine": shifted(wine, "cultivar", 400)}
        for name, frame in moved.items():
            target = models[name]["data"]["target"]
            body = {"records": frame.drop(columns=target).to_dict(orient="records")}
            sent = httpx.post(f"{api}/models/{name}/predict/batch", json=body, timeout=60)
            assert sent.status_code == 200, sent.text
        # Every row once: a batch of repeated rows is rejected (validate.max_duplicate_rate).
        pd.concat([wine, shifted(wine, "cultivar", len(wine))]).to_csv(csv, index=False)

        stack = StackSettings(state_dir=tmp_path / "state", airflow_port=ports["AIRFLOW"])
        with airflow_client(stack) as airflow:
            monitors = {
                "drift_monitor": CHURN,
                "drift_monitor.diabetes": "diabetes",
                "drift_monitor.wine": "wine",
            }
            deadline = time.monotonic() + 600
            started = {dag_id: trigger_dag(airflow, dag_id, deadline) for dag_id in monitors}
            verdicts = {
                dag_id: wait_dag_run(airflow, dag_id, run_id, deadline) for dag_id, run_id in started.items()
            }
            assert {dag_id: (v["__run__"], v["emit"]) for dag_id, v in verdicts.items()} == {
                "drift_monitor": ("success", "skipped"),  # its traffic came from the world it knows
                "drift_monitor.diabetes": ("success", "success"),
                "drift_monitor.wine": ("success", "success"),
            }

            # Each drifted model's own asset started its own training DAG; nothing else trained.
            retrained: dict[str, str] = {}
            deadline = time.monotonic() + 120
            while len(retrained) < 2:
                assert time.monotonic() < deadline, f"asset-triggered runs so far: {retrained}"
                for dag_id in ("training.diabetes", "training.wine"):
                    runs = [r for r in dag_runs(airflow, dag_id) if r["run_type"] == "asset_triggered"]
                    if runs:
                        retrained[dag_id] = runs[0]["dag_run_id"]
                time.sleep(3)
            deadline = time.monotonic() + 900
            for dag_id, run_id in retrained.items():
                assert wait_dag_run(airflow, dag_id, run_id, deadline)["__run__"] == "success", dag_id
            assert [r["run_type"] for r in dag_runs(airflow, "training")] == ["manual"]  # make up's only
        assert len(read_manifest(project / "data" / "wine" / "raw")) == 2  # the changed world's rows

        after = {
            name: registry.get_model_version_by_alias(name, "champion").version for name in (CHURN, *DECLARED)
        }
        assert after == champions  # diabetes had no new rows; wine's winner starts as a canary
        dvc = subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "status"], cwd=project, capture_output=True, text=True
        )
        assert "Data and pipelines are up to date" in dvc.stdout, dvc.stdout + dvc.stderr

        # Wine's retrain won on the changed world's rows: its canary answers a share of wine's
        # traffic under load, while the other two answer with their champions only, and nothing fails.
        promotion = json.loads((project / "reports" / "wine" / "promotion.json").read_text())
        assert (promotion["data_version"], promotion["promoted"]) == ("v2", True)
        canary = str(promotion["candidate"]["version"])
        httpx.post(f"{api}/admin/reload", timeout=60).raise_for_status()
        shown = {name: httpx.get(f"{api}/models/{name}", timeout=10).json() for name in (CHURN, *DECLARED)}
        assert (shown[CHURN]["rollout"], shown["diabetes"]["rollout"]) == (None, None)
        assert (shown["wine"]["rollout"]["stable_version"], shown["wine"]["rollout"]["canary_version"]) == (
            champions["wine"],
            canary,
        )
        loads = [
            Traffic(api, churn_rows[0], clients=1),
            Traffic(api, records["diabetes"], clients=1, path="/models/diabetes/predict"),
            Traffic(api, records["wine"], clients=2, path="/models/wine/predict"),
        ]
        with loads[0] as churn, loads[1] as regression, loads[2] as split:
            wait_for(lambda: len(split.answers) >= 400, timeout=120)
        for traffic in (churn, regression, split):
            assert [a for a in traffic.answers if a[0] != 200] == []
        assert {v for _, v in churn.answers} == {champions[CHURN]}
        assert {v for _, v in regression.answers} == {champions["diabetes"]}
        assert {v for _, v in split.answers} == {champions["wine"], canary}
    finally:
        down = make("down", env, timeout=120, project=project)
    assert down.returncode == 0, down.stderr

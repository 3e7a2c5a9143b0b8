"""`dvc repro`: a second run does nothing, forced runs are byte-identical, the version hash matches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.data.sources.simulated import simulate_churn
from pipeline.driver.run import STAGES
from tests.factories import DIABETES, LIGHT_CANDIDATES, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def dvc(project: Path, uri: str, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def out_hashes(project: Path) -> dict[str, str]:
    """Each output's hash, keyed by its path inside the current model's workspace."""
    lock: dict[str, Any] = yaml.safe_load((project / "dvc.lock").read_text())
    model = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    return {
        o["path"].replace(f"/{model}/", "/"): o["md5"]
        for stage in lock["stages"].values()
        for o in stage.get("outs", [])
    }


def repro(project: Path, uri: str) -> dict[str, Any]:
    """`make repro`: `python -m pipeline repro` in the project; its JSON answer."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(project),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(project), "repro"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["rows"] = 1500
    params["train"]["candidates"] = LIGHT_CANDIDATES
    params["evaluate"]["importance_repeats"] = 2
    params["model"]["name"] = f"dvc-{os.getpid()}-{tmp_path.name}"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.repro
def test_repro_twice_runs_nothing_and_forced_runs_are_identical(project: Path, mlflow_uri: str) -> None:
    first = dvc(project, mlflow_uri, "repro")
    assert "Running stage 'promote'" in first
    hashes = out_hashes(project)
    version = json.loads(next((project / "data").glob("*/version.json")).read_text())
    assert hashes["data/raw"] == version["md5"]
    assert version["version"] == "v1"

    second = dvc(project, mlflow_uri, "repro")
    assert "Running stage" not in second
    assert "up to date" in second

    # Every output is identical, except the promotion record: a forced re-run finds its candidate
    # already champion, and says so.
    decision = hashes.pop("reports/promotion.json")
    dvc(project, mlflow_uri, "repro", "--force")
    again = out_hashes(project)
    assert again.pop("reports/promotion.json") != decision
    assert again == hashes
    assert json.loads(next((project / "reports").glob("*/promotion.json")).read_text())["already_champion"]
    dvc(project, mlflow_uri, "repro", "--force")
    again = out_hashes(project)
    again.pop("reports/promotion.json")
    assert again == hashes
    assert {"models/candidates", "reports/metrics.json", "data/split", "reports/evaluation"} <= set(hashes)


@pytest.mark.repro
def test_a_new_seed_appends_a_version_and_reruns_downstream(project: Path, mlflow_uri: str) -> None:
    dvc(project, mlflow_uri, "repro")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["seed"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, mlflow_uri, "repro")
    assert "Running stage 'train'" in out
    version = json.loads(next((project / "data").glob("*/version.json")).read_text())
    assert (version["version"], version["rows"]) == ("v2", 3000)
    assert out_hashes(project)["data/raw"] == version["md5"]


@pytest.mark.repro
def test_switching_datasets_keeps_each_workspace_intact(project: Path, mlflow_uri: str) -> None:
    """A (simulated churn) -> B (scikit-learn's diabetes) -> A with `make repro`: neither store
    mixes with the other, and back on A with nothing new nothing runs again."""
    original = yaml.safe_load((project / "params.yaml").read_text())
    first = original["model"]["name"]
    assert "promote" in repro(project, mlflow_uri)["ran"]
    churn_raw = {p.name: p.read_bytes() for p in (project / "data" / first / "raw").iterdir()}
    churn_version = json.loads((project / "data" / first / "version.json").read_text())

    other = {**original, "data": {**DIABETES}, "model": {"name": f"{first}-diabetes"}}
    (project / "params.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    assert "promote" in repro(project, mlflow_uri)["ran"]
    diabetes_version = json.loads((project / "data" / f"{first}-diabetes" / "version.json").read_text())
    assert diabetes_version["version"] == "v1"
    assert {p.name: p.read_bytes() for p in (project / "data" / first / "raw").iterdir()} == churn_raw

    (project / "params.yaml").write_text(yaml.safe_dump(original, sort_keys=False))
    assert repro(project, mlflow_uri) == {"ran": [], "pushed_files": 0, "up_to_date": True}
    assert "Running stage" not in dvc(project, mlflow_uri, "repro")  # and the lock is A's own again
    assert json.loads((project / "data" / first / "version.json").read_text()) == churn_version
    assert {p.name: p.read_bytes() for p in (project / "data" / first / "raw").iterdir()} == churn_raw
    listed = subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(project), "datasets"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    datasets = {d["model"]: d for d in json.loads(listed.stdout)}
    assert datasets[first]["current"] is True
    assert datasets[first]["version"] == churn_version["version"]
    assert datasets[f"{first}-diabetes"] == {
        "model": f"{first}-diabetes",
        "current": False,
        **diabetes_version,
    }


def test_an_updated_csv_export_is_ingested_committed_and_pushed(project: Path, tmp_path: Path) -> None:
    """DVC cannot hash the source, so `repro` always asks it for new rows; nothing new changes nothing."""
    export = tmp_path / "customers.csv"
    rows = simulate_churn(900, 5)
    rows.iloc[:600].to_csv(export, index=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] = {**params["data"], "source": "csv", "path": str(export)}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def repro_ingest() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--root", str(project), "repro", "ingest"],
            cwd=project,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(project)},
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    assert repro_ingest()["ran"] == ["ingest"]
    assert repro_ingest() == {"ran": [], "pushed_files": 0, "up_to_date": True}
    rows.to_csv(export, index=False)  # the same path, 300 more customers
    again = repro_ingest()
    assert again["ran"] == ["ingest"]
    assert again["pushed_files"] > 0
    version = json.loads(next((project / "data").glob("*/version.json")).read_text())
    assert (version["version"], version["rows"]) == ("v2", 900)
    assert "in sync" in dvc(project, "", "status", "--cloud", "ingest")


def pipeline_cli(project: Path, uri: str, *args: str) -> dict[str, Any]:
    """`python -m pipeline <args>` in the project; its JSON answer."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(project), *args],
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def lock_stages(project: Path) -> dict[str, Any]:
    stages: dict[str, Any] = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return stages


@pytest.mark.repro
def test_declared_models_run_their_own_stages_and_repro_stays_a_no_op(project: Path, mlflow_uri: str) -> None:
    """A second model under `models:` (scikit-learn's diabetes regression) runs its own stages
    (`<stage>-model@<name>`) in its own workspace: running one model never reruns or rewrites the
    other's, `dvc repro` has nothing to do once both ran, and switching the default model away and
    back keeps the declared model's record."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    first = params["model"]["name"]
    other = f"{first}-diabetes"
    params["models"] = {other: {"data": DIABETES}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert "promote" in pipeline_cli(project, mlflow_uri, "repro")["ran"]
    assert not [name for name in lock_stages(project) if "@" in name]  # the default ran only its own
    plain = lock_stages(project)
    ran = pipeline_cli(project, mlflow_uri, "repro", "--model", other)["ran"]
    assert ran == [f"{stage}-model@{other}" for stage in STAGES]
    after = lock_stages(project)
    assert {name: entry for name, entry in after.items() if "@" not in name} == plain
    assert (project / "data" / other / "raw").is_dir()
    assert (project / "reports" / other / "promotion.json").is_file()
    registered = json.loads((project / "reports" / other / "registered.json").read_text())
    assert registered["model_name"] == other

    assert "Running stage" not in dvc(project, mlflow_uri, "repro")  # every model's stages are current
    assert pipeline_cli(project, mlflow_uri, "repro", "--model", other)["up_to_date"]

    # The default model switched to another dataset and back: its own lock entries are put back,
    # the declared model's stay.
    switched = {**params, "model": {"name": f"{first}-b"}, "data": {**DIABETES}}
    (project / "params.yaml").write_text(yaml.safe_dump(switched, sort_keys=False))
    assert "promote" in pipeline_cli(project, mlflow_uri, "repro")["ran"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert pipeline_cli(project, mlflow_uri, "repro")["up_to_date"]
    assert lock_stages(project) == after
    assert "Running stage" not in dvc(project, mlflow_uri, "repro")


def test_a_second_run_in_the_project_waits_for_the_first(project: Path) -> None:
    """Two models' runs at once would both write dvc.lock: the second waits for the first's lock,
    says so, and goes on once it is released (here the test holds it, as a first run would)."""
    from filelock import FileLock

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"] = {"waiting": {"data": DIABETES}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    held = FileLock(project / ".dvc" / "tmp" / "bitloop-run.lock")
    held.acquire()
    second = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--root", str(project), "repro", "ingest", "--model", "waiting"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=10)
    finally:
        held.release()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "waiting for another run in this project to finish" in err
    assert json.loads(out)["ran"] == ["ingest-model@waiting"]

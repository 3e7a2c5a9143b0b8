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

from tests.factories import LIGHT_CANDIDATES, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def dvc(project: Path, uri: str, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def out_hashes(project: Path) -> dict[str, str]:
    lock: dict[str, Any] = yaml.safe_load((project / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


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
    version = json.loads((project / "data" / "version.json").read_text())
    assert hashes["data/raw"] == version["md5"]
    assert version["version"] == "v1"

    second = dvc(project, mlflow_uri, "repro")
    assert "Running stage" not in second
    assert "up to date" in second

    dvc(project, mlflow_uri, "repro", "--force")
    assert out_hashes(project) == hashes
    dvc(project, mlflow_uri, "repro", "--force")
    assert out_hashes(project) == hashes
    assert {"models/candidates", "metrics.json", "data/split", "reports/evaluation"} <= set(hashes)


def test_a_new_seed_appends_a_version_and_reruns_downstream(project: Path, mlflow_uri: str) -> None:
    dvc(project, mlflow_uri, "repro")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["seed"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, mlflow_uri, "repro")
    assert "Running stage 'train'" in out
    version = json.loads((project / "data" / "version.json").read_text())
    assert (version["version"], version["rows"]) == ("v2", 3000)
    assert out_hashes(project)["data/raw"] == version["md5"]

"""`python -m pipeline reproduce`: an old version's data comes back from the DVC remote and retrains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.factories import DIABETES, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.repro]
BIN = Path(sys.executable).parent


def cli(project: Path, uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The pipeline's CLI as `make repro` runs it, with the project's own copy of the code."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": str(project),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(project), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_project(tmp_path / "project")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["rows"] = 1200
    params["train"]["candidates"] = {"linear": {"kind": "linear", "alpha": 1.0}}
    params["evaluate"]["importance_repeats"] = 1
    params["model"]["name"] = f"reproduce-{os.getpid()}-{tmp_path.name}"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_a_version_from_two_data_versions_ago_is_restored_from_the_remote_and_identical(
    project: Path, mlflow_uri: str
) -> None:
    model = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    client = MlflowClient(mlflow_uri)
    first = json.loads(cli(project, mlflow_uri, "repro").stdout)
    assert first["ran"][0] == "ingest"
    assert first["ran"][-1] == "promote"
    assert first["pushed_files"] > 0
    again = json.loads(cli(project, mlflow_uri, "repro").stdout)
    assert again == {"ran": [], "pushed_files": 0, "up_to_date": True}
    oldest = client.get_model_version_by_alias(model, "champion").version

    for seed in ("2", "3"):  # the DAG's way: a drawn batch, committed and pushed, then the stages
        drawn = json.loads(cli(project, mlflow_uri, "repro", "ingest", "--seed", seed).stdout)
        assert drawn["appended_rows"] == 1200
        assert drawn["pushed_files"] > 0
        cli(project, mlflow_uri, "repro")
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
    versions = client.search_model_versions(f"name = '{model}'")
    assert {v.tags["bitloop.data_version"] for v in versions} == {"v1", "v2", "v3"}

    # Neither the workspace nor the local cache holds v1 any more: only the DVC remote does.
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    done = cli(project, mlflow_uri, "reproduce", "--version", oldest)
    report = json.loads(done.stdout)
    assert report["identical"] is True, report
    assert (report["data_version"], report["candidate"], report["differences"]) == ("v1", "linear", [])
    assert report["holdout_rows"] > 200

    # The verdict can fail: the same record retrained by other code is reported, row by row.
    models = project / "pipeline" / "stages" / "models.py"
    models.write_text(models.read_text().replace("C=1.0 / alpha", "C=0.01 / alpha"))
    changed = cli(project, mlflow_uri, "reproduce", "--version", oldest, check=False)
    assert changed.returncode == 1, changed.stderr
    verdict = json.loads(changed.stdout)
    assert verdict["identical"] is False
    assert any(d.startswith("probabilities: ") and "holdout rows differ" in d for d in verdict["differences"])


def test_a_declared_models_version_reproduces_from_its_own_stages(project: Path, mlflow_uri: str) -> None:
    """A model under `models:` (scikit-learn's diabetes regression) is retrained from its record with
    its own params, and its data outputs are checked against its own stages' lock entries."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    other = f"{params['model']['name']}-diabetes"
    params["models"] = {other: {"data": DIABETES}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = json.loads(cli(project, mlflow_uri, "repro", "--model", other).stdout)["ran"]
    assert ran[-1] == f"promote-model@{other}"
    version = MlflowClient(mlflow_uri).get_model_version_by_alias(other, "champion").version
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data")
    report = json.loads(cli(project, mlflow_uri, "reproduce", "--model", other, "--version", version).stdout)
    assert report["identical"] is True, report
    assert (report["model"], report["data_version"], report["differences"]) == (other, "v1", [])
    assert report["holdout_rows"] > 50


def test_data_outputs_are_compared_with_the_models_own_lock_entries(tmp_path: Path) -> None:
    """A rebuilt output that differs from the recorded one is named, for a declared model's stages too."""
    from pipeline.driver.reproduce import Reproduction, _compare_data
    from pipeline.workspace import Workspace

    workspace = Workspace(tmp_path, "other", declared=True)
    workspace.version_file.parent.mkdir(parents=True)
    workspace.version_file.write_text("rebuilt\n")
    from pipeline.data.store import file_md5

    own = {"outs": [{"path": "data/other/version.json", "md5": "0" * 32}]}
    # The default model's entry of the same name matches: only the model's own entry may be read.
    plain = {"outs": [{"path": "data/other/version.json", "md5": file_md5(workspace.version_file)}]}
    lock = tmp_path / "recorded.lock"
    lock.write_text(yaml.safe_dump({"stages": {"ingest": plain, "ingest-model@other": own}}))
    result = Reproduction(model="other", version="1", candidate="linear", data_version="v1")
    _compare_data(lock, workspace, result)
    assert len(result.differences) == 1
    assert result.differences[0].startswith(f"data/other/version.json: recorded {'0' * 32}, rebuilt ")


def test_a_version_without_a_record_is_refused_with_a_reason(project: Path, mlflow_uri: str) -> None:
    done = cli(project, mlflow_uri, "reproduce", "--model", "no-such-model", "--version", "1", check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no-such-model" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_params_edit_leaves_the_commit_exact_and_a_code_edit_marks_it(tmp_path: Path) -> None:
    """The README asks users to edit params.yaml; a run records its parameters itself, so only code
    changes make the commit '-dirty' (and `reproduce` fall back to the current code)."""
    from pipeline.stages.provenance import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "x.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git_commit(tmp_path)
    assert len(head) == 40
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "pipeline" / "x.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"

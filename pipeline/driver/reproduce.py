"""Retrain a registered version from its record and say whether the result is identical.

Every version's run carries what it was made from (`pipeline/stages/register.py`): the git commit,
the dataset's DVC hash, `params.yaml`, the DVC lock of its run and the list of installed
distributions. `reproduce` restores that raw store from the DVC remote into a temporary
workspace, runs validate → split → train there with the recorded parameters and the recorded
commit's code, and compares the retrained candidate with the registered model on the holdout,
bit for bit. Anything that differs is listed: predictions, data hashes, code or environment.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.errors import BitloopError
from core.registry import GIT_COMMIT_TAG, RECORD_DIR, Tags, connect, download_model
from core.serialization import load_sklearn_model
from core.settings import PipelineSettings
from pipeline.stages.provenance import environment_lock
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
RETRAIN_STAGES = ("validate", "split", "train")
CODE = ("core", "pipeline")
"""The packages the stages run: what a reproduction checks out of the recorded commit."""


class ReproduceError(BitloopError, RuntimeError):
    """The version cannot be reproduced at all (no record, data missing from the remote, a stage failed)."""


@dataclass
class Reproduction:
    """The verdict: `identical` when the holdout and every prediction on it match bit for bit."""

    model: str
    version: str
    candidate: str
    data_version: str
    holdout_rows: int = 0
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.holdout_rows > 0 and not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "candidate": self.candidate,
            "data_version": self.data_version,
            "holdout_rows": self.holdout_rows,
            "identical": self.identical,
            "differences": self.differences,
            "notes": self.notes,
        }


def reproduce(root: Path, model: str, version: str, settings: PipelineSettings) -> Reproduction:
    """Retrain `model` version `version` in a temporary workspace and compare it with the registered one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    try:
        mv = client.get_model_version(model, version)
    except MlflowException as err:
        raise ReproduceError(f"the registry has no version {version} of {model!r}: {err.message}") from None
    if mv.run_id is None:
        raise ReproduceError(f"version {version} of {model!r} has no run: nothing records how it was made")
    run = client.get_run(mv.run_id)
    tags = {**run.data.tags, **mv.tags}
    result = Reproduction(
        model=model,
        version=str(version),
        candidate=tags.get(Tags.CANDIDATE, ""),
        data_version=tags.get(Tags.DATA_VERSION, "?"),
    )
    if not result.candidate or Tags.DATA_MD5 not in tags:
        raise ReproduceError(f"version {version} of {model!r} was not registered by this pipeline")

    with tempfile.TemporaryDirectory(prefix="bitloop-reproduce-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            record = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path=RECORD_DIR, dst_path=str(scratch / "record")
                )
            )
        except Exception as err:  # MLflow raises several types for a missing artefact
            raise ReproduceError(
                f"version {version} of {model!r} has no reproduction record ({RECORD_DIR}/ in run "
                f"{mv.run_id}): it was registered before versions carried one"
            ) from err
        project = scratch / "project"
        _checkout_code(root, tags.get(GIT_COMMIT_TAG, "unknown"), project, result)
        shutil.copy(record / "params.yaml", project / "params.yaml")
        workspace = _recorded_workspace(project, model)
        _restore_raw(root, tags[Tags.DATA_MD5], workspace.raw_dir)
        _retrain(workspace)
        _compare_environment(record / "environment.txt", result)
        if (record / "dvc.lock").is_file():
            _compare_data(record / "dvc.lock", workspace, result)
        registered = _load_registered(client, model, str(version), scratch / "model")
        _compare_predictions(registered, workspace, result)
    log.info("reproduced", extra={"model": model, "version": version, "identical": result.identical})
    return result


def _checkout_code(root: Path, commit: str, dest: Path, result: Reproduction) -> None:
    """The recorded commit's code, or (uncommitted, unknown or absent commit) the current code, noted."""
    dest.mkdir(parents=True)
    clean = commit not in ("", "unknown") and not commit.endswith("-dirty")
    if clean:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-tree", "--name-only", commit],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        # The stages' code as the commit had it: `core` too once it existed (a version registered
        # before it had everything in `pipeline`).
        paths = [path for path in (*CODE, "dvc.yaml") if path in listed]
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", commit, *paths],
            capture_output=True,
            check=False,
        )
        if archive.returncode == 0:
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(dest, filter="data")
            return
        result.notes.append(
            f"commit {commit} is not in the repository at {root}: retrained with the current code"
        )
    elif commit.endswith("-dirty"):
        result.notes.append(
            f"the version was trained from uncommitted changes on {commit.removesuffix('-dirty')}: "
            "retrained with the current code"
        )
    else:
        result.notes.append("the version records no git commit: retrained with the current code")
    for package in CODE:
        shutil.copytree(root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "dvc.yaml", dest / "dvc.yaml")


def _restore_raw(root: Path, md5: str, dest: Path) -> None:
    """Pull the raw store with DVC content hash `md5` from the project's DVC remote into `dest`."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from pipeline.driver.versioning import quiet_dvc, remote_override, stdout_to_stderr

    quiet_dvc()
    store = dest.parent
    store.mkdir(parents=True, exist_ok=True)
    try:
        with Repo(str(root), **remote_override()) as project:
            remote_name = project.config["core"].get("remote")
            if not remote_name:
                raise ReproduceError(f"{root} has no default DVC remote to restore data from")
            remote = dict(project.config["remote"][remote_name])
        with stdout_to_stderr():
            Repo.init(str(store), no_scm=True)
        with Repo(str(store)) as repo, stdout_to_stderr():
            with repo.config.edit("local") as conf:
                conf["remote"][remote_name] = remote
                conf["core"]["remote"] = remote_name
                conf["core"]["analytics"] = False
            (store / "raw.dvc").write_text(
                yaml.safe_dump({"outs": [{"md5": md5, "path": "raw", "hash": "md5"}]})
            )
            repo.pull(targets=[str(store / "raw.dvc")])
    except DvcException as err:
        raise ReproduceError(
            f"the raw store {md5} cannot be restored from the DVC remote: {err}. "
            "Every data version is pushed when it is created; was the remote cleared?"
        ) from err
    shutil.rmtree(store / ".dvc")
    (store / "raw.dvc").unlink()


def _recorded_workspace(project: Path, model: str) -> Workspace:
    """The workspace the recorded params.yaml gives `model`: its default model's, or (a model it declares
    under `models:`) that model's own."""
    recorded = yaml.safe_load((project / "params.yaml").read_text())
    default = recorded["model"]["name"]
    if model != default and model in (recorded.get("models") or {}):
        return Workspace(project, model, declared=True)
    return Workspace(project, default)


def _retrain(workspace: Workspace) -> None:
    """validate → split → train with the checked-out code (its own packages) and params."""
    project = workspace.root
    chosen = ["--model", workspace.model] if workspace.declared else []
    for stage in RETRAIN_STAGES:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--root", str(project), stage, *chosen],
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(project)},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ReproduceError(f"stage {stage} failed while retraining:\n{done.stderr[-3000:]}")
        log.info("retrained stage", extra={"stage": stage})


def _compare_environment(recorded: Path, result: Reproduction) -> None:
    before = set(recorded.read_text().split())
    now = set(environment_lock().split())
    changed = sorted(before ^ now)
    if changed:
        result.notes.append(
            f"the environment differs from the recorded one in {len(changed)} pins "
            f"(recorded, not now: {sorted(before - now)[:10]}; "
            f"now, not recorded: {sorted(now - before)[:10]})"
        )


def _compare_data(lock_file: Path, workspace: Workspace, result: Reproduction) -> None:
    """Each recorded data output (raw store, prepared data, split) against the rebuilt one."""
    from pipeline.data.store import dvc_dir_md5, file_md5

    lock = yaml.safe_load(lock_file.read_text())
    model = workspace.model
    for stage in ("ingest", "validate", "split"):
        for out in lock.get("stages", {}).get(workspace.stage(stage), {}).get("outs", []):
            path = workspace.root / out["path"]
            if f"/{model}/" not in f"/{out['path']}" or not path.exists():
                continue
            rebuilt = dvc_dir_md5(path) if out["md5"].endswith(".dir") else file_md5(path)
            if rebuilt != out["md5"]:
                result.differences.append(f"{out['path']}: recorded {out['md5']}, rebuilt {rebuilt}")


def _load_registered(client: Any, model: str, version: str, dest: Path) -> Any:
    return load_sklearn_model(download_model(client, model, version, dest))


def _compare_predictions(registered: Any, workspace: Workspace, result: Reproduction) -> None:
    """Labels and (for classifiers) probabilities of both models on the holdout, compared bit for bit."""
    from core.schema import DatasetSchema
    from pipeline.stages.candidates import load_candidate

    schema = DatasetSchema.read(workspace.schema_file)
    holdout = pd.read_parquet(workspace.test_file)[schema.feature_names]
    retrained = load_candidate(workspace.candidate_file(result.candidate))
    result.holdout_rows = len(holdout)
    methods = {"predictions": "predict"}
    if schema.task == "classification":
        methods["probabilities"] = "predict_proba"
    for what, method in methods.items():
        before = np.asarray(getattr(registered, method)(holdout))
        after = np.asarray(getattr(retrained, method)(holdout))
        if before.shape != after.shape or before.dtype != after.dtype:
            result.differences.append(
                f"{what}: {before.dtype}{before.shape} registered, {after.dtype}{after.shape} retrained"
            )
            continue
        if before.dtype.kind == "O":
            rows = (before != after).reshape(len(holdout), -1).any(axis=1)
        else:  # the bytes of each row: bit for bit, NaN included
            as_bytes = [
                np.ascontiguousarray(a).view(np.uint8).reshape(len(holdout), -1) for a in (before, after)
            ]
            rows = (as_bytes[0] != as_bytes[1]).any(axis=1)
        if rows.any():
            worst = (
                float(np.max(np.abs(before.astype(float) - after.astype(float))))
                if before.dtype.kind in "fiu"
                else None
            )
            result.differences.append(
                f"{what}: {int(rows.sum())} of {len(holdout)} holdout rows differ"
                + (f" (largest difference {worst:.3g})" if worst is not None else "")
            )

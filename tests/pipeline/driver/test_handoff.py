"""Stages on machines that share no disk hand their outputs over through the DVC remote alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.driver.handoff import STATE_DIR
from pipeline.driver.run import STAGES
from tests.factories import DIABETES, LIGHT_CANDIDATES, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SEED = 11


def machine(root: Path, model: str) -> Path:
    """A project directory of its own (a worker's disk)."""
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["rows"] = 1500
    params["train"]["candidates"] = LIGHT_CANDIDATES
    params["evaluate"]["importance_repeats"] = 2
    params["model"]["name"] = model
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def pipeline(root: Path, uri: str, remote: Path | None, *args: str, exit_code: int = 0) -> Any:
    """The CLI on one machine: with a shared `remote` (BITLOOP_DVC_REMOTE_URL), the remote hand-off."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if remote is not None:
        env |= {"BITLOOP_STAGE_HANDOFF": "remote", "BITLOOP_DVC_REMOTE_URL": str(remote)}
    command = [sys.executable, "-m", "pipeline", "--root", str(root), *args]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == exit_code, done.stderr[-3000:]
    return json.loads(done.stdout) if exit_code == 0 else done.stderr


def outputs(lock: Path) -> dict[str, str]:
    """Every stage output's hash but the promotion record (a second decision finds its champion)."""
    stages = yaml.safe_load(lock.read_text())["stages"]
    hashes = {o["path"]: o["md5"] for stage in stages.values() for o in stage.get("outs", [])}
    return {path: md5 for path, md5 in hashes.items() if not path.endswith("promotion.json")}


@dataclass(frozen=True)
class TwoMachines:
    """Two project directories (workers' disks) that share one DVC remote and one MLflow."""

    model: str
    shared: Path
    workers: tuple[Path, Path]
    uri: str

    def run(self, worker: Path, *args: str, exit_code: int = 0) -> Any:
        return pipeline(worker, self.uri, self.shared, *args, exit_code=exit_code)

    @property
    def state(self) -> Path:
        return self.shared / STATE_DIR / self.model


@pytest.fixture
def machines(tmp_path: Path, mlflow_uri: str) -> TwoMachines:
    model = f"handoff-{tmp_path.name}"
    workers = (machine(tmp_path / "a", model), machine(tmp_path / "b", model))
    return TwoMachines(model, tmp_path / "shared-remote", workers, mlflow_uri)


@pytest.mark.repro  # 95 s: with the reproducibility checks, out of make test
def test_stages_alternating_between_two_machines_give_what_one_machine_gives(
    tmp_path: Path, machines: TwoMachines
) -> None:
    workers = machines.workers
    machines.run(workers[0], "repro", "ingest", "--seed", str(SEED))
    # ingest retried on the other machine (its first attempt published): nothing is appended twice.
    again = machines.run(workers[1], "repro", "ingest", "--seed", str(SEED))
    assert (again["appended_rows"], again["version"], again["recorded"]) == (0, "v1", False)
    for index, stage in enumerate(STAGES[1:]):
        machines.run(workers[index % 2], "repro", stage)
    # train retried on the machine that did not run it: the same candidates, byte for byte.
    published = machines.state / "dvc.lock"
    before = outputs(published)
    trainer = STAGES[1:].index("train") % 2
    machines.run(workers[1 - trainer], "repro", "train")
    assert outputs(published) == before
    summary = machines.run(workers[1], "summary", "--run-label", "handoff")
    assert summary["promoted"] is True, summary

    # One machine, one disk, the same batch: the same outputs as the two machines' run.
    alone = machine(tmp_path / "alone", machines.model)
    pipeline(alone, machines.uri, None, "repro", "ingest", "--seed", str(SEED))
    for stage in STAGES[1:]:
        pipeline(alone, machines.uri, None, "repro", stage)
    assert outputs(alone / "dvc.lock") == before
    assert len(before) == 10, before
    own = alone / ".bitloop" / "dvc-remote"  # .dvc/config's remote, which the workers never used
    assert own.is_dir()
    assert not (own / STATE_DIR).exists()  # the workspace hand-off publishes nothing
    assert not any((w / ".bitloop").exists() for w in workers)


def test_a_withdrawal_on_one_machine_is_what_the_next_machine_validates(machines: TwoMachines) -> None:
    a, b = machines.workers
    machines.run(a, "repro", "ingest", "--seed", "1")
    machines.run(a, "repro", "ingest", "--seed", "2")
    withdrawn = machines.run(b, "batches", "withdraw", "batch-00001.parquet")
    assert withdrawn["version"]["version"] == "v3"
    machines.run(a, "repro", "validate")
    listed = {entry["batch"]: entry["status"] for entry in machines.run(b, "batches", "list")}
    assert listed == {"batch-00001.parquet": "withdrawn", "batch-00002.parquet": "ok"}, listed


def test_a_refused_batch_leaves_its_report_for_every_machine_and_the_lock_as_it_was(
    machines: TwoMachines,
) -> None:
    a, b = machines.workers
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["validate"]["min_class_rows"] = 10**6  # no class has that many rows: the dataset is refused
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    machines.run(a, "repro", "ingest", "--seed", "3")
    state = machines.state
    lock = (state / "dvc.lock").read_bytes()
    machines.run(a, "repro", "validate", exit_code=3)
    report = json.loads((state / "reports" / machines.model / "validation.json").read_text())
    assert report["passed"] is False
    assert "min_class_rows" in json.dumps(report["dataset_errors"])
    assert (state / "dvc.lock").read_bytes() == lock  # validate did not succeed: the lock says so
    listed = machines.run(b, "batches", "list")
    assert [entry["batch"] for entry in listed] == ["batch-00001.parquet"]


def test_a_declared_models_stages_hand_over_its_own_state_only(tmp_path: Path, mlflow_uri: str) -> None:
    """A model under `models:` runs on alternating machines from its own published state: its lock
    entries and reports travel, and nothing of the default model's is published or pulled."""
    default, other = f"handoff-{tmp_path.name}", f"handoff-{tmp_path.name}-diabetes"
    workers = []
    for name in ("a", "b"):
        root = machine(tmp_path / name, default)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["models"] = {other: {"data": DIABETES}}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        workers.append(root)
    machines = TwoMachines(other, tmp_path / "shared-remote", (workers[0], workers[1]), mlflow_uri)
    for index, stage in enumerate(("ingest", "validate", "split", "train")):
        ran = machines.run(workers[index % 2], "repro", stage, "--model", other)
        assert ran["ran"] == [f"{stage}-model@{other}"], ran
    published = yaml.safe_load((machines.state / "dvc.lock").read_text())["stages"]
    assert set(published) == {f"{stage}-model@{other}" for stage in ("ingest", "validate", "split", "train")}
    assert {p.relative_to(machines.state).parts[:2] for p in machines.state.rglob("*") if p.is_file()} <= {
        ("dvc.lock",),
        ("data", other),
        ("reports", other),
    }
    assert not (machines.shared / STATE_DIR / default).exists()
    assert not any((w / "data" / default).exists() for w in workers)

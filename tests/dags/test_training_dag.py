"""The training DAG: integrity, wiring, and full runs with dag.test() against a real MLflow server."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from core.errors import EXIT_INVALID_DATA
from core.registry import Tags
from pipeline.driver.run import STAGES as PIPELINE_STAGES
from tests.dags.conftest import DAGS
from tests.factories import DIABETES, git_project, light_params, make_workspace, messy_churn_csv

# The DAG spells the stages itself (it may run where the pipeline package is not importable);
# pipeline.driver.run.STAGES is the list it must follow, then the run's summary.
STAGES = [*PIPELINE_STAGES, "summary"]


def dvc(project: Path, *args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def git_status(project: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout


def load_dag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag("training")


def test_every_dag_file_imports_cleanly(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == set(KINDS)


def test_tasks_run_the_stages_in_order_with_retries(airflow_db: Path) -> None:
    dag = load_dag(airflow_db)
    assert [t.task_id for t in dag.topological_sort()] == ["gate", *STAGES]
    for upstream, downstream in itertools.pairwise(["gate", *STAGES]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    for task in dag.tasks:
        assert task.retries == 2
        assert task.retry_exponential_backoff
        assert task.max_retry_delay == timedelta(minutes=10)
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def test_schedule_is_daily_or_the_drift_or_quality_asset(airflow_db: Path) -> None:
    import bitloop_stages as module
    from airflow.sdk import AssetOrTimeSchedule

    dag = load_dag(airflow_db)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "0 0 * * *"  # type: ignore[attr-defined]  # @daily
    assert dag.timetable.asset_condition == module.DRIFT | module.QUALITY
    assert [o.uri for o in dag.get_task("summary").outlets] == [module.CHAMPION.uri]


KINDS = ("training", "drift_monitor", "ground_truth", "rollout")


def declaring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *others: str) -> None:
    """A project whose params.yaml declares these models beside the default one (`dag-churn`)."""
    raw = light_params(model={"name": "dag-churn"}, models={name: {"data": DIABETES} for name in others})
    make_workspace(tmp_path / "declared", raw)
    monkeypatch.setenv("BITLOOP_PROJECT_DIR", str(tmp_path / "declared"))


def test_every_declared_model_has_its_own_dags_and_assets(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model under `models:` gets each kind of DAG, `<kind>.<name>`, tagged with its model; its
    drift and quality assets start its own training DAG only, and the default model's DAGs keep their
    one-model names and assets."""
    from airflow.dag_processing.dagbag import DagBag

    declaring(tmp_path, monkeypatch, "dag-diabetes", "dag-iris")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {*KINDS, *(f"{k}.{m}" for k in KINDS for m in ("dag-diabetes", "dag-iris"))}
    for kind in KINDS:
        assert "model:dag-churn" in bag.get_dag(kind).tags
        assert "model:dag-diabetes" in bag.get_dag(f"{kind}.dag-diabetes").tags
        assert bag.get_dag(kind).dag_display_name == f"{kind} · dag-churn"
        assert bag.get_dag(f"{kind}.dag-iris").dag_display_name == f"{kind} · dag-iris"

    def starts(dag_id: str) -> set[str]:
        condition = bag.get_dag(dag_id).timetable.asset_condition
        return {asset.name for asset in getattr(condition, "objects", (condition,))}

    def emits(dag_id: str) -> set[str]:
        return {outlet.name for outlet in bag.get_dag(dag_id).get_task("emit").outlets}

    assert starts("training") == {"bitloop_drift", "bitloop_quality"}
    assert starts("training.dag-diabetes") == {"bitloop_drift/dag-diabetes", "bitloop_quality/dag-diabetes"}
    assert emits("drift_monitor.dag-diabetes") | emits("ground_truth.dag-diabetes") == starts(
        "training.dag-diabetes"
    )
    assert emits("drift_monitor") | emits("ground_truth") == starts("training")
    assert emits("rollout.dag-iris") == {"bitloop_champion/dag-iris"}
    summary = bag.get_dag("training.dag-iris").get_task("summary")
    assert {outlet.name for outlet in summary.outlets} == {"bitloop_champion/dag-iris"}


@pytest.mark.parametrize("minutes_past_midnight", [1, 90, 601])
@pytest.mark.parametrize("dag_id", KINDS)
def test_a_new_dag_waits_for_its_next_scheduled_time(
    airflow_db: Path, dag_id: str, minutes_past_midnight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unpaused for the first time (the first `make up`), a DAG must not run the interval it just
    # missed: that run raced `make up`'s own training run and trained twice. The clock is set just
    # after a cron time, where Airflow's default still runs the missed one.
    import airflow.timetables.trigger
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.timezone import coerce_datetime
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    now += timedelta(minutes=minutes_past_midnight)
    monkeypatch.setattr(airflow.timetables.trigger, "utcnow", lambda: now)
    # What the scheduler sees: the DAG as serialised for it.
    dag = DagSerialization.from_dict(DagSerialization.to_dict(DagBag(dag_folder=str(DAGS)).get_dag(dag_id)))
    earliest = None if dag.start_date is None else coerce_datetime(dag.start_date)
    restriction = TimeRestriction(earliest=earliest, latest=None, catchup=dag.catchup)
    first = dag.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert first is not None
    assert first.run_after >= now  # never a time already past


def test_exit_code_contract_matches_the_cli() -> None:
    import bitloop_stages as module

    assert module.EXIT_INVALID_DATA == EXIT_INVALID_DATA


def test_dag_files_do_no_work_at_import() -> None:
    for path in DAGS.glob("*.py"):  # bitloop_stages.py included: it is imported by every DAG
        code = (
            "import time, runpy, airflow.sdk; t = time.perf_counter(); "
            f"runpy.run_path({str(path)!r}); print(time.perf_counter() - t)"
        )
        seconds = float(
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(DAGS)},
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        assert seconds < 1.0, path


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_dag_runs_end_to_end_then_fails_cleanly_on_a_bad_batch(
    airflow_db: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = git_project(tmp_path / "project", light_params(model={"name": "dag-churn"}))
    monkeypatch.setenv("BITLOOP_PROJECT_DIR", str(workspace.root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    dag = load_dag(airflow_db)
    client = MlflowClient(mlflow_uri)

    first = dag.test()
    assert first.state == "success"
    # One path through DVC: the lock describes the DAG's run, and nothing tracked by git changed.
    assert "Data and pipelines are up to date" in dvc(workspace.root, "status")
    assert git_status(workspace.root) == ""
    champion = client.get_model_version_by_alias("dag-churn", "champion")
    experiment = client.get_experiment_by_name("dag-churn")
    assert experiment is not None
    summaries = client.search_runs([experiment.experiment_id], "tags.`bitloop.kind` = 'training-summary'")
    assert len(summaries) == 1
    assert summaries[0].data.params["champion_after"] == champion.version

    second = dag.test()
    assert second.state == "success"
    report = workspace.promotion_file.read_text()
    assert '"data_version": "v2"' in report
    assert '"reason"' in report
    versions = len(client.search_model_versions("name = 'dag-churn'"))
    champion_after_second = client.get_model_version_by_alias("dag-churn", "champion").version

    bad = messy_churn_csv(tmp_path / "bad.csv")  # renamed columns: cannot match the schema
    make_workspace(
        workspace.root, light_params(model={"name": "dag-churn"}, data={"source": "csv", "path": str(bad)})
    )
    third = dag.test()
    assert third.state == "failed"
    states = {ti.task_id: ti.state for ti in third.get_task_instances()}
    assert states["validate"] == "failed"
    # The refused batch was pushed when it was ingested: a later withdrawal can name it, any
    # reproduction can restore it.
    assert "in sync" in dvc(workspace.root, "status", "--cloud", "ingest")
    assert states["train"] != "success"
    assert client.get_model_version_by_alias("dag-churn", "champion").version == champion_after_second
    assert len(client.search_model_versions("name = 'dag-churn'")) == versions


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.repro
def test_the_dag_trained_champion_reproduces_bit_for_bit(
    airflow_db: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = git_project(tmp_path / "project", light_params(model={"name": "dag-reproduce"}))
    monkeypatch.setenv("BITLOOP_PROJECT_DIR", str(workspace.root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    assert load_dag(airflow_db).test().state == "success"
    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias("dag-reproduce", "champion")
    commit = subprocess.run(
        ["git", "-C", str(workspace.root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # The DAG left the work tree clean, so the version names a commit its code can be taken from.
    assert champion.run_id is not None
    assert client.get_run(champion.run_id).data.tags["mlflow.source.git.commit"] == commit

    reproduce = ["reproduce", "--version", champion.version]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(workspace.root), *reproduce],
        cwd=workspace.root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(workspace.root)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["identical"] is True
    assert report["differences"] == []
    # Retrained from the recorded commit's code (git archive), so no note says otherwise.
    assert not [n for n in report["notes"] if "code" in n], report["notes"]


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_a_declared_models_training_dag_trains_that_model_only(
    airflow_db: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`training.<name>` runs that model's stages (scikit-learn's diabetes regression here) through
    DVC and promotes its champion; the default model is not trained, and the work tree stays clean."""
    raw = light_params(model={"name": "dag-default"}, models={"dag-regression": {"data": DIABETES}})
    workspace = git_project(tmp_path / "project", raw)
    monkeypatch.setenv("BITLOOP_PROJECT_DIR", str(workspace.root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert bag.get_dag("training.dag-regression").test().state == "success"
    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias("dag-regression", "champion")
    assert champion.run_id is not None
    assert {**client.get_run(champion.run_id).data.tags, **champion.tags}[Tags.TASK] == "regression"
    assert client.search_model_versions("name = 'dag-default'") == []
    assert (workspace.root / "reports" / "dag-regression" / "promotion.json").is_file()
    assert not (workspace.root / "data" / "dag-default").exists()
    stages = yaml.safe_load((workspace.root / "dvc.lock").read_text())["stages"]
    assert set(stages) == {f"{stage}-model@dag-regression" for stage in PIPELINE_STAGES}
    assert git_status(workspace.root) == ""


def test_make_up_names_each_models_training_dag_as_the_dag_files_do() -> None:
    import bitloop_stages

    from ops.local.airflow_api import training_dag_id

    for name, default in (("bitloop-churn", True), ("diabetes", False), ("fraud.v2", False)):
        assert training_dag_id(name, default) == bitloop_stages.Model(name, default).dag_id("training")

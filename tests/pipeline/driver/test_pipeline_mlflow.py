"""The whole pipeline against a real MLflow server: champion, challengers, rollback, every source."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from core.params import parse_params
from core.settings import PipelineSettings
from pipeline.data.sources.bundled import load_bundled
from pipeline.data.store import withdraw_batch
from pipeline.driver.run import run_all, run_stage
from pipeline.stages.ingest import ingest
from pipeline.stages.promote import SchemaMismatch, aliases, rollback
from pipeline.stages.validate import ValidationFailed
from pipeline.workspace import read_json
from tests.factories import DIABETES, light_params, make_workspace, messy_churn_csv, project_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def champion_version(uri: str, name: str) -> str:
    champion = aliases(name, PipelineSettings(mlflow_tracking_uri=uri))["champion"]
    assert champion is not None, f"{name} has no @champion"
    return str(champion["version"])


def test_default_params_end_with_a_champion_carrying_its_lineage(tmp_path: Path, mlflow_uri: str) -> None:
    raw = project_params()
    raw["model"]["name"] = "default-churn"
    workspace, params = make_workspace(tmp_path, raw)
    report = run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    assert report["promoted"] is True
    version = champion_version(mlflow_uri, "default-churn")
    assert version == report["candidate"]["version"]

    client = MlflowClient(mlflow_uri)
    mv = client.get_model_version("default-churn", version)
    assert mv.tags["bitloop.decision"] == "promoted"
    assert mv.tags["bitloop.data_version"] == "v1"
    assert mv.run_id is not None
    run = client.get_run(mv.run_id)
    assert run.inputs is not None
    assert run.data.metrics["roc_auc"] > 0.7
    assert {"accuracy", "f1", "roc_auc", "log_loss"} <= set(run.data.metrics)
    assert run.data.tags["bitloop.data_md5"] == read_json(workspace.version_file)["md5"]
    assert "mlflow.source.git.commit" in run.data.tags
    assert {i.dataset.digest for i in run.inputs.dataset_inputs} == {run.data.tags["bitloop.data_md5"][:32]}
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"reference_profile.json", "feature_schema.json", "validation.json", "evaluation"} <= artifacts
    plots = {a.path for a in client.list_artifacts(mv.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/feature_importance.png"} <= plots
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/default-churn@champion")
    assert model.metadata.signature is not None


def test_second_batch_promotes_or_records_why_not_and_rollback_restores(
    tmp_path: Path, mlflow_uri: str
) -> None:
    workspace, params = make_workspace(tmp_path, light_params(model={"name": "growing-churn"}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    first = run_all(params, workspace, settings, seed=11)
    assert first["promoted"]
    second = run_all(params, workspace, settings, seed=12)
    assert second["data_version"] == "v2"
    assert second["champion"]["version"] == first["candidate"]["version"]
    champion_value = second["champion"]["metrics"][second["metric"]]
    assert second["decision"]["champion"] == pytest.approx(champion_value)
    client = MlflowClient(mlflow_uri)
    candidate = client.get_model_version("growing-churn", second["candidate"]["version"])
    assert candidate.tags["bitloop.compared_on"] == "v2"
    assert candidate.tags["bitloop.decision_reason"] == second["reason"]
    if second["promoted"]:
        assert champion_version(mlflow_uri, "growing-churn") == second["candidate"]["version"]
    else:
        assert "margin" in second["reason"]
        assert aliases("growing-churn", settings)["challenger"]["version"] == second["candidate"]["version"]

    # Force a promotion of a worse model to have something to roll back from.
    third = run_all(params, workspace, settings, seed=13, drift=1.0)
    again = run_stage("promote", params, workspace, settings)
    assert again["promoted"] is False  # idempotent: the same decision, nothing moves
    before = champion_version(mlflow_uri, "growing-churn")
    if not third["promoted"]:
        client.set_registered_model_alias("growing-churn", "previous", before)
        client.set_registered_model_alias("growing-churn", "champion", third["candidate"]["version"])
    demoted = champion_version(mlflow_uri, "growing-churn")
    restored = rollback("growing-churn", settings)
    assert champion_version(mlflow_uri, "growing-churn") == restored["champion"] != demoted
    assert client.get_model_version("growing-churn", demoted).tags["bitloop.decision"] == "rolled_back"
    with pytest.raises(Exception, match="nothing to roll back to"):
        rollback("growing-churn", settings)


def test_promote_is_idempotent(tmp_path: Path, mlflow_uri: str) -> None:
    workspace, params = make_workspace(tmp_path, light_params(model={"name": "idempotent-churn"}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    run_all(params, workspace, settings)
    versions_before = MlflowClient(mlflow_uri).search_model_versions("name = 'idempotent-churn'")
    registered = run_stage("register", params, workspace, settings)
    report = run_stage("promote", params, workspace, settings)
    assert report["already_champion"] is True
    assert len(MlflowClient(mlflow_uri).search_model_versions("name = 'idempotent-churn'")) == len(
        versions_before
    )
    assert registered["best"] == report["candidate"]["name"]


def test_regression_on_sklearn_diabetes(tmp_path: Path, mlflow_uri: str) -> None:
    raw = light_params(
        data=DIABETES,
        model={"name": "diabetes"},
    )
    workspace, params = make_workspace(tmp_path, raw)
    report = run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    assert report["metric"] == "rmse"
    assert report["promoted"]
    run_id = read_json(workspace.registered_file)["candidates"][report["candidate"]["name"]]["run_id"]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert {"rmse", "mae", "r2"} <= set(run.data.metrics)
    assert run.data.metrics["r2"] > 0.3
    plots = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/residuals.png" in plots


def test_messy_csv_with_string_labels(tmp_path: Path, mlflow_uri: str) -> None:
    csv = messy_churn_csv(tmp_path / "export.csv")
    raw = light_params(
        data={"source": "csv", "path": str(csv), "target": "Churn", "id_column": None},
        model={"name": "csv-churn"},
    )
    workspace, params = make_workspace(tmp_path / "ws", raw)
    report = run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    assert report["promoted"]
    schema = read_json(workspace.schema_file)
    assert schema["id_column"] == "CustomerID"
    assert schema["classes"] == ["No", "Yes"]
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["total_charges"] == "numeric"
    assert kinds["age"] == "numeric"
    assert next(f for f in schema["features"] if f["name"] == "contract")["categories"] == [
        "month_to_month",
        "one_year",
        "two_year",
    ]
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.sklearn.load_model("models:/csv-churn@champion")
    assert set(model.classes_) == {"No", "Yes"}


def test_bad_batch_stops_before_training_and_keeps_the_champion(tmp_path: Path, mlflow_uri: str) -> None:
    workspace, params = make_workspace(tmp_path, light_params(model={"name": "guarded-churn"}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    run_all(params, workspace, settings)
    champion = champion_version(mlflow_uri, "guarded-churn")
    versions = len(MlflowClient(mlflow_uri).search_model_versions("name = 'guarded-churn'"))
    model_bytes = workspace.candidate_file("linear").read_bytes()

    bad = messy_churn_csv(tmp_path / "bad.csv")
    csv_params = parse_params(light_params(data={"source": "csv", "path": str(bad)}))
    ingest(csv_params, workspace)  # wrong column names: the batch cannot match the schema
    with pytest.raises(ValidationFailed, match="expected column is missing"):
        run_stage("validate", params, workspace, settings)
    assert champion_version(mlflow_uri, "guarded-churn") == champion
    assert len(MlflowClient(mlflow_uri).search_model_versions("name = 'guarded-churn'")) == versions
    assert workspace.candidate_file("linear").read_bytes() == model_bytes


def test_changed_schema_is_never_compared_with_the_champion(tmp_path: Path, mlflow_uri: str) -> None:
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    workspace, params = make_workspace(tmp_path / "a", light_params(model={"name": "shared-name"}))
    run_all(params, workspace, settings)
    champion = champion_version(mlflow_uri, "shared-name")
    raw = light_params(
        data={"source": "sklearn", "name": "breast_cancer", "target": "diagnosis", "id_column": None},
        model={"name": "shared-name"},
    )
    other, other_params = make_workspace(tmp_path / "b", raw)
    with pytest.raises(SchemaMismatch, match=r"Set a new model.name in params.yaml"):
        run_all(other_params, other, settings)
    assert read_json(other.schema_file)["classes"] == ["benign", "malignant"]
    assert champion_version(mlflow_uri, "shared-name") == champion
    report = run_stage("promote", other_params, other, settings, allow_schema_change=True)
    assert report["promoted"]
    assert "allow" in report["reason"]
    assert champion_version(mlflow_uri, "shared-name") == report["candidate"]["version"]
    mlflow.set_tracking_uri(mlflow_uri)
    served = mlflow.sklearn.load_model("models:/shared-name@champion")
    assert set(served.predict(load_bundled("breast_cancer", "diagnosis").drop(columns="diagnosis"))) == {
        "benign",
        "malignant",
    }


def test_a_new_data_label_on_the_same_rows_registers_nothing(tmp_path: Path, mlflow_uri: str) -> None:
    """A refused batch withdrawn makes a new data version, but the rows trained on are the same: the
    run registers no duplicate versions, and its reports say which data version it repeats."""
    workspace, params = make_workspace(tmp_path, light_params(model={"name": "relabelled-churn"}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    first = run_all(params, workspace, settings, seed=31)
    assert first["promoted"]
    versions = {
        v.version for v in MlflowClient(mlflow_uri).search_model_versions("name = 'relabelled-churn'")
    }
    ingest(params, workspace, seed=32)
    batch = sorted(workspace.raw_dir.glob("batch-*.parquet"))[-1]
    broken = pd.read_parquet(batch)
    broken["tenure_months"] = "unknown"  # a whole column that does not parse: the batch is refused
    broken.to_parquet(batch, index=False)
    with pytest.raises(ValidationFailed):
        run_stage("validate", params, workspace, settings)
    withdraw_batch(workspace, batch.name, "corrupt column")
    for stage in ("validate", "split", "train", "evaluate", "register"):
        run_stage(stage, params, workspace, settings)
    again = run_stage("promote", params, workspace, settings)
    after = {v.version for v in MlflowClient(mlflow_uri).search_model_versions("name = 'relabelled-churn'")}
    assert after == versions  # nothing registered twice
    registered = read_json(workspace.registered_file)
    assert registered["data_version"]["version"] == "v3"  # a new label ...
    assert {c["unchanged_since"] for c in registered["candidates"].values() if c["version"]} == {
        "v1"
    }  # ... old rows
    assert again["promoted"] is False
    assert again["reason"].startswith("nothing new: the rows and the model are those of data version v1")

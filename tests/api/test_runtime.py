"""BITLOOP_API_RUNTIME: a version's compiled graph answers when it passed parity, scikit-learn otherwise,
and both answer the same records alike; a version that cannot compile registers and says why."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, SplineTransformer

from core.params import load_params
from core.schema import MISSING_CATEGORY
from core.settings import PipelineSettings
from pipeline.stages.candidates import save_candidate
from pipeline.stages.register import register
from tests.api.conftest import Trained, holdout_records, train_model

pytestmark = pytest.mark.integration


def test_the_champion_is_answered_by_its_compiled_graph_and_says_so(
    make_client: Any, mlflow_uri: str, churn_model: Trained
) -> None:
    client = make_client(churn_model.name)
    info = client.get("/model").json()
    assert info["runtime"] == "onnx"
    assert "parity passed" in info["runtime_detail"]
    tags = MlflowClient(mlflow_uri).get_model_version(churn_model.name, churn_model.version).tags
    assert tags["bitloop.compiled.status"] == "passed"
    assert float(tags["bitloop.compiled.max_abs_diff"]) <= 1e-5
    assert int(tags["bitloop.compiled.rows"]) > 100
    metrics = client.get("/metrics").text
    assert f'runtime="onnx",variant="champion",version="{churn_model.version}"}} 1.0' in metrics


@pytest.mark.parametrize("model", ["churn_model", "diabetes_model"])
def test_both_runtimes_answer_the_same_records_alike(
    make_client: Any, model: str, request: pytest.FixtureRequest
) -> None:
    trained: Trained = request.getfixturevalue(model)
    compiled, reference = make_client(trained.name), make_client(trained.name, runtime="sklearn")
    assert reference.get("/model").json()["runtime"] == "sklearn"
    assert "BITLOOP_API_RUNTIME=sklearn" in reference.get("/model").json()["runtime_detail"]
    assert compiled.get("/model").json()["runtime"] == "onnx"
    records = holdout_records(trained)
    assert trained.schema.task == "regression" or any(v is None for r in records for v in r.values())
    got = compiled.post("/predict/batch", json={"records": records}).json()
    expected = reference.post("/predict/batch", json={"records": records}).json()
    if trained.schema.task == "regression":
        assert all(
            math.isclose(g, e, rel_tol=1e-6, abs_tol=1e-6)
            for g, e in zip(got["predictions"], expected["predictions"], strict=True)
        )
        return
    assert got["predictions"] == expected["predictions"]
    for g, e in zip(got["probabilities"], expected["probabilities"], strict=True):
        assert g.keys() == e.keys()
        assert all(abs(g[k] - e[k]) <= 1e-5 for k in g)
    # One record at a time, through the micro-batcher, too.
    for record in records[:20]:
        one = compiled.post("/predict", json=record).json()
        assert one["prediction"] == reference.post("/predict", json=record).json()["prediction"]


def uncompilable(trained: Trained) -> Pipeline:
    """A pipeline of scikit-learn steps skl2onnx has no converter for (SplineTransformer)."""
    schema = trained.schema
    frame = pd.read_parquet(trained.workspace.train_file)
    preprocess = ColumnTransformer(
        [
            ("splines", make_pipeline(SimpleImputer(), SplineTransformer()), schema.numeric),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                schema.categorical,
            ),
        ]
    )
    model = Pipeline([("preprocess", preprocess), ("model", LogisticRegression(max_iter=2000))])
    return model.fit(frame[schema.feature_names], frame[schema.target])


@pytest.fixture(scope="module")
def uncompiled(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Trained:
    """A model whose champion was registered by the register stage from an uncompilable candidate."""
    trained = train_model(tmp_path_factory.mktemp("uncompiled"), mlflow_uri, "uncompiled-churn")
    save_candidate(uncompilable(trained), trained.workspace.candidate_file("linear"))
    params = load_params(trained.workspace.root / "params.yaml")
    report = register(params, trained.workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    version = report["candidates"]["linear"]["version"]
    MlflowClient(mlflow_uri).set_registered_model_alias(trained.name, "champion", version)
    return Trained(trained.name, version, trained.workspace, trained.schema)


def test_a_version_that_cannot_compile_registers_says_why_and_is_served_by_scikit_learn(
    make_client: Any, mlflow_uri: str, uncompiled: Trained
) -> None:
    tags = MlflowClient(mlflow_uri).get_model_version(uncompiled.name, uncompiled.version).tags
    assert tags["bitloop.compiled.status"] == "error"
    assert "SplineTransformer" in tags["bitloop.compiled.error"]
    client = make_client(uncompiled.name)
    info = client.get("/model").json()
    assert (info["version"], info["runtime"]) == (uncompiled.version, "sklearn")
    assert "SplineTransformer" in info["runtime_detail"]
    records = holdout_records(uncompiled, 20)
    answer = client.post("/predict/batch", json={"records": records})
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == 20


def test_runtime_compiled_refuses_a_version_without_a_graph_that_passed_parity(
    make_client: Any, uncompiled: Trained, churn_model: Trained
) -> None:
    refusing = make_client(uncompiled.name, runtime="compiled")
    ready = refusing.get("/ready")
    assert ready.status_code == 503
    assert "no compiled graph that passed parity" in ready.json()["detail"]
    assert refusing.post("/predict", json=holdout_records(uncompiled, 1)[0]).status_code == 503
    assert make_client(churn_model.name, runtime="compiled").get("/model").json()["runtime"] == "onnx"


def test_a_graph_that_strays_from_scikit_learn_in_this_server_is_not_served(
    make_client: Any, mlflow_uri: str, tmp_path: Path, uncompiled: Trained
) -> None:
    """Another candidate's graph stored as this version's: the check at load catches it."""
    client = MlflowClient(mlflow_uri)
    passed = [
        v
        for v in client.search_model_versions(f"name = '{uncompiled.name}'")
        if v.tags.get("bitloop.compiled.status") == "passed"
    ]
    target, other = passed[0], passed[1]
    graph = Path(client.download_artifacts(str(other.run_id), "compiled/model.onnx", str(tmp_path)))
    client.log_artifact(str(target.run_id), str(graph), "compiled")
    client.set_registered_model_alias(uncompiled.name, "champion", target.version)
    try:
        served = make_client(uncompiled.name).get("/model").json()
        refusing = make_client(uncompiled.name, runtime="compiled").get("/ready")
    finally:
        client.set_registered_model_alias(uncompiled.name, "champion", uncompiled.version)
    assert (served["version"], served["runtime"]) == (target.version, "sklearn")
    assert "disagrees with scikit-learn" in served["runtime_detail"]
    assert refusing.status_code == 503

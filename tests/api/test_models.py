"""One model server for several models: each under /models/{name}, each with its own parts, the
default one at the root as before, and at most BITLOOP_API_MAX_LOADED_MODELS of them in memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from core.predictions.access import count_rows
from core.rollout import Terms, start
from tests.api.conftest import Trained, api_server, holdout_records, train_model
from tests.api.traffic import Traffic, wait_for
from tests.factories import DIABETES

pytestmark = pytest.mark.integration


def iris_csv(path: Path) -> dict[str, Any]:
    """A multi-class CSV export (scikit-learn's iris, species by name) and the data section reading it."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [str(bunch.target_names[t]) for t in frame.pop("target")]
    frame.to_csv(path, index=False)
    return {"source": "csv", "path": str(path), "target": "species", "id_column": None}


Client = Callable[..., TestClient]


def samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def listed(client: TestClient) -> dict[str, dict[str, Any]]:
    answer = client.get("/models")
    assert answer.status_code == 200, answer.text
    return {model["name"]: model for model in answer.json()["models"]}


@pytest.fixture
def two(make_client: Client, churn_model: Trained, diabetes_model: Trained, tmp_path: Path) -> TestClient:
    return make_client(
        churn_model.name,
        models=[churn_model.name, diabetes_model.name],
        prediction_log_url=str(tmp_path / "two.sqlite"),
    )


def test_each_model_answers_under_its_name_and_the_default_at_the_root(
    two: TestClient, churn_model: Trained, diabetes_model: Trained
) -> None:
    models = listed(two)
    assert list(models) == [churn_model.name, diabetes_model.name]
    assert models[churn_model.name]["default"] is True
    assert (models[diabetes_model.name]["state"], models[diabetes_model.name]["task"]) == (
        "serving",
        "regression",
    )
    assert models[diabetes_model.name]["version"] == diabetes_model.version

    regression = holdout_records(diabetes_model, 3)
    answer = two.post(f"/models/{diabetes_model.name}/predict", json=regression[0])
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == diabetes_model.name
    assert isinstance(answer.json()["prediction"], float)
    batch = two.post(f"/models/{diabetes_model.name}/predict/batch", json={"records": regression})
    assert (batch.status_code, len(batch.json()["predictions"])) == (200, 3)

    churn = holdout_records(churn_model, 1)[0]
    assert two.post("/predict", json=churn).json()["model_name"] == churn_model.name
    assert (
        two.post(f"/models/{churn_model.name}/predict", json=churn).json()["model_name"] == churn_model.name
    )
    # Each model's records are its own: the churn record is not a diabetes one.
    refused = two.post(f"/models/{diabetes_model.name}/predict", json=churn)
    assert refused.status_code == 422

    assert two.get(f"/models/{diabetes_model.name}").json()["target"] == diabetes_model.schema.target
    assert two.get("/model").json()["name"] == churn_model.name
    assert two.get(f"/models/{diabetes_model.name}/ready").json()["model_name"] == diabetes_model.name


def test_a_model_not_served_is_a_404_that_says_where_to_look(two: TestClient) -> None:
    for path in ("/models/nope/predict", "/models/nope", "/models/nope/performance"):
        answer = two.post(path, json={}) if path.endswith("predict") else two.get(path)
        assert answer.status_code == 404, path
        assert "GET /models lists" in answer.json()["detail"]
    protocol = two.get("/v2/models/nope")
    assert protocol.status_code == 404
    assert "not served here" in protocol.json()["error"]


def test_the_inference_protocol_serves_every_model(two: TestClient, diabetes_model: Trained) -> None:
    metadata = two.get(f"/v2/models/{diabetes_model.name}").json()
    assert metadata["name"] == diabetes_model.name
    record = holdout_records(diabetes_model, 1)[0]
    inputs = [
        {"name": k, "datatype": "FP64", "shape": [1], "data": [v if v is not None else float("nan")]}
        for k, v in record.items()
    ]
    answer = two.post(f"/v2/models/{diabetes_model.name}/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == diabetes_model.name


def test_metrics_logs_and_quality_keep_models_apart(
    two: TestClient, churn_model: Trained, diabetes_model: Trained
) -> None:
    def counted() -> dict[str, float]:  # the process's metrics: other tests' predictions are in them
        found: dict[str, float] = {}
        for labels, value in samples(two, "bitloop_predictions_total").items():
            model = dict(labels)["model"]
            found[model] = found.get(model, 0.0) + value
        return found

    before = counted()
    two.post("/predict/batch", json={"records": holdout_records(churn_model, 4)})
    two.post(
        f"/models/{diabetes_model.name}/predict/batch", json={"records": holdout_records(diabetes_model, 7)}
    )
    after = counted()
    added = {name: after[name] - before.get(name, 0.0) for name in (churn_model.name, diabetes_model.name)}
    assert added == {churn_model.name: 4.0, diabetes_model.name: 7.0}
    performance = two.get(f"/models/{diabetes_model.name}/performance", params={"fresh": "true"}).json()
    assert performance["model_name"] == diabetes_model.name
    assert performance["task"] == "regression"
    loaded = samples(two, "bitloop_model_loaded")
    assert loaded[(("model", churn_model.name),)] == loaded[(("model", diabetes_model.name),)] == 1.0


def test_an_outcome_goes_to_the_model_it_is_sent_for(
    two: TestClient, churn_model: Trained, diabetes_model: Trained, tmp_path: Path
) -> None:
    """The same customer scored by both models: each model's /feedback finds its own prediction."""
    churn = two.post("/predict", params={"id": "c-1"}, json=holdout_records(churn_model, 1)[0]).json()
    value = two.post(
        f"/models/{diabetes_model.name}/predict",
        params={"id": "c-1"},
        json=holdout_records(diabetes_model, 1)[0],
    ).json()
    wait_for(lambda: count_rows(tmp_path / "two.sqlite") >= 2, 10)
    label = str(churn_model.schema.classes[0])
    assert two.post("/feedback", json={"outcomes": [{"id": "c-1", "outcome": label}]}).json()["recorded"] == 1
    sent = {"outcomes": [{"id": "c-1", "outcome": 120.5}]}
    assert two.post(f"/models/{diabetes_model.name}/feedback", json=sent).json()["recorded"] == 1
    # A request id of one model is unknown to the other's feedback.
    other = {"outcomes": [{"request_id": value["request_id"], "row": 0, "outcome": label}]}
    assert two.post("/feedback", json=other).json()["unknown"] == 1
    assert churn["model_name"] == churn_model.name


def test_past_the_budget_the_least_recently_used_model_is_unloaded_and_loaded_on_demand(
    make_client: Client, churn_model: Trained, diabetes_model: Trained
) -> None:
    client = make_client(
        churn_model.name, models=[churn_model.name, diabetes_model.name], max_loaded_models=1
    )
    models = listed(client)
    assert (models[churn_model.name]["state"], models[diabetes_model.name]["state"]) == (
        "serving",
        "unloaded",
    )
    assert client.get("/models").json()["loaded"] == 1

    answer = client.post(f"/models/{diabetes_model.name}/predict", json=holdout_records(diabetes_model, 1)[0])
    assert answer.status_code == 200, answer.text
    models = listed(client)
    assert (models[churn_model.name]["state"], models[diabetes_model.name]["state"]) == (
        "unloaded",
        "serving",
    )
    assert (models[diabetes_model.name]["cold_loads"], models[churn_model.name]["unloads"]) == (1, 1)

    assert client.post("/predict", json=holdout_records(churn_model, 1)[0]).status_code == 200
    models = listed(client)
    assert (models[churn_model.name]["state"], models[diabetes_model.name]["state"]) == (
        "serving",
        "unloaded",
    )
    assert samples(client, "bitloop_model_unloads_total")[(("model", diabetes_model.name),)] == 1.0
    # Unloaded is not broken: the alert on bitloop_model_loaded stays quiet.
    assert samples(client, "bitloop_model_loaded")[(("model", diabetes_model.name),)] == 1.0


def test_a_model_whose_champion_is_refused_leaves_the_others_serving(
    make_client: Client, churn_model: Trained, diabetes_model: Trained, mlflow_uri: str, tmp_path: Path
) -> None:
    """A model whose only version cannot load answers 503 alone; the server is ready for the others."""
    registry = MlflowClient(mlflow_uri)
    broken = "refused-only-version"
    registry.create_registered_model(broken)
    run = registry.create_run(registry.create_experiment(f"{broken}-{tmp_path.name}")).info.run_id
    version = registry.create_model_version(broken, f"runs:/{run}/model", run_id=run).version
    registry.set_registered_model_alias(broken, "champion", version)
    client = make_client(churn_model.name, models=[churn_model.name, broken, diabetes_model.name])
    models = listed(client)
    assert models[broken]["state"] == "refused"
    assert (models[churn_model.name]["state"], models[diabetes_model.name]["state"]) == ("serving", "serving")
    assert client.post(f"/models/{broken}/predict", json={}).status_code == 503
    assert client.get("/ready").status_code == 200
    answer = client.post(f"/models/{diabetes_model.name}/predict", json=holdout_records(diabetes_model, 1)[0])
    assert answer.status_code == 200


def other_version(registry: MlflowClient, trained: Trained) -> str:
    """A version of the model other than the one it serves (each candidate is registered)."""
    return next(
        str(v.version)
        for v in registry.search_model_versions(f"name = '{trained.name}'")
        if str(v.version) != trained.version
    )


@pytest.mark.slow
def test_a_swap_and_a_canary_of_one_model_under_load_move_no_other_models_answers(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    """Three models on one server under uvicorn (the churn classifier, a diabetes regression, a
    three-class classifier trained from a CSV export), under load while the regression's champion
    moves and then the classifier's canary starts: every request is answered, the regression swaps,
    the classifier splits between its versions, and the others keep theirs throughout."""
    regression = train_model(tmp_path / "diabetes", mlflow_uri, "three-diabetes", data=DIABETES)
    iris = train_model(tmp_path / "iris", mlflow_uri, "three-iris", data=iris_csv(tmp_path / "iris.csv"))
    registry = MlflowClient(mlflow_uri)
    target, canary = other_version(registry, regression), other_version(registry, iris)
    served = ",".join((churn_model.name, regression.name, iris.name))
    with api_server(tmp_path, mlflow_uri, churn_model.name, BITLOOP_API_MODELS=served) as base:
        wait_for(lambda: httpx.get(f"{base}/models/{iris.name}/ready").status_code == 200)
        three = {m["name"]: m for m in httpx.get(f"{base}/models").json()["models"]}
        assert [three[n]["task"] for n in served.split(",")] == [
            "classification",
            "regression",
            "classification",
        ]
        loads = [
            Traffic(base, holdout_records(churn_model, 1)[0], clients=2),
            Traffic(base, holdout_records(iris, 1)[0], clients=2, path=f"/models/{iris.name}/predict"),
            Traffic(
                base, holdout_records(regression, 1)[0], clients=1, path=f"/models/{regression.name}/predict"
            ),
        ]
        with loads[0] as churn, loads[1] as flowers, loads[2] as swapped:
            wait_for(lambda: min(len(churn.answers), len(flowers.answers)) > 100)
            registry.set_registered_model_alias(regression.name, "champion", target)
            wait_for(lambda: any(v == target for _, v in swapped.answers[-10:]), timeout=60)
            swapped_at = len(swapped.answers)
            start(registry, iris.name, canary, iris.version, Terms(0.5, 10**6, 60.0))
            wait_for(lambda: any(v == canary for _, v in flowers.answers[-10:]), timeout=60)
            count = len(flowers.answers)
            wait_for(lambda: len(flowers.answers) > count + 200 and len(swapped.answers) > swapped_at + 50)
    for traffic in (churn, flowers, swapped):
        assert [a for a in traffic.answers if a[0] != 200] == []
    assert {v for _, v in churn.answers} == {churn_model.version}
    assert {v for _, v in swapped.answers} == {regression.version, target}
    assert {v for _, v in swapped.answers[swapped_at:]} == {target}  # the canary moved none of these
    split = [v for _, v in flowers.answers[count:]]
    assert set(split) == {iris.version, canary}
    assert 0.3 < split.count(canary) / len(split) < 0.7  # a share of 0.5


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/predict", "/predict"),
        ("/models/any-name/predict", "/models/{name}/predict"),
        ("/models/x/predict/batch", "/models/{name}/predict/batch"),
        ("/models//predict", "other"),
        ("/models/a/b/predict", "other"),
        ("/models/a/predict/other", "other"),
    ],
)
def test_requests_in_flight_are_labelled_by_a_closed_set_of_routes(path: str, label: str) -> None:
    """A client choosing model names cannot mint series: every name maps to one template."""
    from api.main import _predict_route

    assert _predict_route(path) == label

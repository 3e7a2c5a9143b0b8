"""Every endpoint and error path of the model server, in process against a real registry."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.predictions.access import count_rows, read_features, read_rows
from tests.api.conftest import Trained, sample_record
from tests.factories import PROJECT
from tests.servers import free_port

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]


def test_predict_answers_with_class_probabilities_and_the_version(
    make_client: Client, churn_model: Trained
) -> None:
    client = make_client(churn_model.name)
    response = client.post("/predict", json=sample_record(churn_model.schema))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == churn_model.version
    assert body["variant"] == "champion"
    assert set(body["probabilities"]) == {"0", "1"}
    assert math.isclose(sum(body["probabilities"].values()), 1.0)
    assert body["prediction"] in (0, 1)
    assert len(body["request_id"]) == 32


def test_batch_predictions_match_single_ones(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    records = [sample_record(churn_model.schema) | {"tenure_months": float(t)} for t in range(0, 60, 6)]
    batch = client.post("/predict/batch", json={"records": records}).json()
    singles = [client.post("/predict", json=r).json() for r in records]
    assert batch["predictions"] == [s["prediction"] for s in singles]
    for many, one in zip(batch["probabilities"], singles, strict=True):
        assert many == pytest.approx(one["probabilities"])


def test_regression_has_values_and_no_probabilities(make_client: Client, diabetes_model: Trained) -> None:
    client = make_client(diabetes_model.name)
    body = client.post("/predict", json=sample_record(diabetes_model.schema)).json()
    assert isinstance(body["prediction"], float)
    assert body["probabilities"] is None
    info = client.get("/model").json()
    assert info["task"] == "regression"
    assert {"rmse", "mae", "r2"} <= set(info["metrics"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenure_months": "three"}, "tenure_months"),
        ({"tenure_months": True}, "tenure_months"),
        ({"region": "atlantis"}, "region"),
        ({"region": 3}, "region"),
        ({"loyalty": 1}, "loyalty"),
    ],
)
def test_bad_fields_get_422_naming_the_field(
    make_client: Client, churn_model: Trained, change: dict[str, object], field: str
) -> None:
    client = make_client(churn_model.name)
    response = client.post("/predict", json=sample_record(churn_model.schema) | change)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]


def test_missing_field_nan_and_infinity_are_422(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    required = [f.name for f in churn_model.schema.features if not f.nullable]
    for name in required:
        record = sample_record(churn_model.schema)
        del record[name]
        assert client.post("/predict", json=record).json()["detail"][0]["loc"] == ["body", name]
    for bad in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps(sample_record(churn_model.schema)).replace(
            '"monthly_charges": 1.0', f'"monthly_charges": {bad}'
        )
        response = client.post("/predict", content=text, headers={"content-type": "application/json"})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", "monthly_charges"]


def test_a_nullable_feature_may_be_left_out_and_the_schema_says_so(
    make_client: Client, churn_model: Trained
) -> None:
    client = make_client(churn_model.name)
    optional = {f.name for f in churn_model.schema.features if f.nullable}
    assert optional  # the simulated churn table has missing values
    record = {k: v for k, v in sample_record(churn_model.schema).items() if k not in optional}
    left_out = client.post("/predict", json=record)
    assert left_out.status_code == 200, left_out.text
    as_null = client.post("/predict", json=record | dict.fromkeys(optional))
    assert as_null.json()["prediction"] == left_out.json()["prediction"]  # absent means missing
    assert as_null.json()["probabilities"] == left_out.json()["probabilities"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert set(schema["required"]) == {f.name for f in churn_model.schema.features} - optional
    assert {
        name for name, field in schema["properties"].items() if field.get("default", 0) is None
    } == optional


def test_a_numeric_string_is_422_naming_the_field(make_client: Client, churn_model: Trained) -> None:
    # JSON numbers only: "39.5" is refused rather than guessed at (the README says so).
    client = make_client(churn_model.name)
    response = client.post("/predict", json=sample_record(churn_model.schema) | {"monthly_charges": "39.5"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "monthly_charges"]


def test_malformed_oversized_and_wrongly_shaped_bodies_are_422(
    make_client: Client, churn_model: Trained
) -> None:
    client = make_client(churn_model.name, max_batch_rows=5, max_body_bytes=4096)
    assert (
        client.post(
            "/predict", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert client.post("/predict", json=[sample_record(churn_model.schema)]).status_code == 422
    too_many = client.post("/predict/batch", json={"records": [sample_record(churn_model.schema)] * 6})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "records"]
    empty = client.post("/predict/batch", json={"records": []})
    assert empty.json()["detail"][0]["loc"] == ["body", "records"]
    huge = client.post("/predict", content=b" " * 5000, headers={"content-type": "application/json"})
    assert huge.status_code == 422
    assert "limit" in huge.json()["detail"][0]["msg"]


def test_no_champion_means_not_ready_and_503(make_client: Client) -> None:
    client = make_client("never-trained")
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    response = client.post("/predict", json={"x": 1})
    assert response.status_code == 503
    assert "no model has been promoted" in response.json()["detail"]
    assert client.get("/model").status_code == 503


def guarded_routes(client: TestClient) -> set[str]:
    """The app's own routes that depend on the API key check."""
    from fastapi.routing import APIRoute

    from api.state import require_api_key

    def guarded(dependant: Any) -> bool:
        return any(d.call is require_api_key or guarded(d) for d in dependant.dependencies)

    return {r.path for r in client.app.routes if isinstance(r, APIRoute) and guarded(r.dependant)}  # type: ignore[attr-defined]


def test_api_key_guards_the_routes_the_readme_names_and_no_others(
    make_client: Client, churn_model: Trained
) -> None:
    """The README's list (and its settings table) against the app's routes; then each kind sent for
    real: without the key 401, with it answered, and the open routes open."""
    client = make_client(churn_model.name, api_key="s3cret")
    readme = (PROJECT / "README.md").read_text()
    listed = "`/predict*`, `/feedback`, `/v2/models/*/infer`, `/drift`, `/performance` " + (
        "(also under `/models/{name}/`)"
    )
    assert f"With an API key set, {listed}\n  and `/admin/*` require it." in readme
    assert f"when set, {listed} and `/admin/*` require the `X-API-Key` header |" in readme
    assert guarded_routes(client) == {
        "/predict",
        "/predict/batch",
        "/feedback",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{model_version}/infer",
        "/drift",
        "/performance",
        "/admin/reload",
        "/models/{name}/predict",
        "/models/{name}/predict/batch",
        "/models/{name}/feedback",
        "/models/{name}/drift",
        "/models/{name}/performance",
    }
    record = sample_record(churn_model.schema)
    key = {"X-API-Key": "s3cret"}
    assert client.post("/predict", json=record).status_code == 401
    assert client.post("/predict", json=record, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/predict", json=record, headers=key).status_code == 200
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers=key).json()["changed"] is False
    for path in ("/drift", "/performance"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=key).status_code == 200, path
    for path in ("/ready", "/metrics", "/model", "/health"):
        assert client.get(path).status_code == 200, path


def test_model_endpoint_describes_the_champion(make_client: Client, churn_model: Trained) -> None:
    info = make_client(churn_model.name).get("/model").json()
    assert info["version"] == churn_model.version
    assert info["data_version"] == "v1"
    assert info["metrics"]["roc_auc"] > 0.6
    assert [f["name"] for f in info["features"]] == churn_model.schema.feature_names
    assert info["classes"] == [0, 1]
    for spec, feature in zip(churn_model.schema.features, info["features"], strict=True):
        if spec.kind == "categorical":
            assert feature["typical"] in spec.categories
        else:
            assert isinstance(feature["typical"], float)


def test_the_page_and_the_api_docs_need_no_network(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "fetch(predictPath()" in page.text
    docs = client.get("/docs").text
    assert "cdn." not in docs
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static/docs/{asset}" in docs
        assert client.get(f"/static/docs/{asset}").status_code == 200
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_openapi_documents_the_served_schema(make_client: Client, churn_model: Trained) -> None:
    spec = make_client(churn_model.name).get("/openapi.json").json()
    record = spec["components"]["schemas"]["Record"]
    assert set(record["properties"]) == set(churn_model.schema.feature_names)
    assert record["additionalProperties"] is False
    assert record["examples"]
    for path in ("/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics", "/admin/reload"):
        assert path in spec["paths"]
    assert "422" in spec["paths"]["/predict"]["post"]["responses"]
    # Every JSON answer is described by a model, the drift report included.
    answers = {
        (path, method): op["responses"]["200"]["content"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if path != "/metrics"
    }
    assert {key: list(content) for key, content in answers.items() if "application/json" not in content} == {}
    assert {
        key: content["application/json"]["schema"]
        for key, content in answers.items()
        if "$ref" not in content["application/json"]["schema"]
    } == {}
    assert answers[("/drift", "get")]["application/json"]["schema"]["$ref"].endswith("/DriftReport")
    # Every POST that reads a body requires one, described by name; no key configured, none asked for.
    posts = {
        path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops and path != "/admin/reload"
    }
    assert {p: op.get("requestBody", {}).get("required") for p, op in posts.items()} == dict.fromkeys(
        posts, True
    )
    for op in posts.values():
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"]
    assert "securitySchemes" not in spec["components"]
    assert [p for p, ops in spec["paths"].items() for op in ops.values() if "security" in op] == []


def test_openapi_asks_for_the_key_only_where_one_is_configured(
    make_client: Client, churn_model: Trained
) -> None:
    spec = make_client(churn_model.name, api_key="k3y").get("/openapi.json").json()
    guarded = {p for p, ops in spec["paths"].items() for op in ops.values() if "security" in op}
    assert {"/predict", "/predict/batch", "/feedback", "/drift", "/performance", "/admin/reload"} <= guarded
    assert "/health" not in guarded
    assert "X-API-Key" in str(spec["components"]["securitySchemes"])


def test_metrics_count_requests_predictions_and_the_served_version(
    make_client: Client, churn_model: Trained
) -> None:
    client = make_client(churn_model.name)
    for _ in range(3):
        client.post("/predict", json=sample_record(churn_model.schema))
    client.post("/predict", json={"bad": 1})
    text = client.get("/metrics").text
    assert (
        'bitloop_model_info{model="api-churn",runtime="onnx",variant="champion",'
        f'version="{churn_model.version}"}} 1.0' in text
    )
    assert 'bitloop_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'bitloop_http_requests_total{method="POST",route="/predict",status="422"}' in text
    assert "bitloop_http_request_duration_seconds_bucket" in text
    assert "bitloop_inference_batch_rows_bucket" in text
    assert 'bitloop_predictions_total{model="api-churn"' in text
    assert "process_resident_memory_bytes" in text
    client.post("/predict/../../anything", json={})
    client.get("/predict-x")
    in_flight = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("bitloop_http_requests_in_progress{")
    ]
    assert {line.split('route="')[1].split('"')[0] for line in in_flight} <= {
        "/predict",
        "/predict/batch",
        "/models/{name}/predict",
        "/models/{name}/predict/batch",
        "other",
    }


def test_every_answered_prediction_is_logged(
    tmp_path: Path, make_client: Client, churn_model: Trained
) -> None:
    client = make_client(churn_model.name)
    log_path = client.app.state.bitloop.settings.prediction_log_url  # type: ignore[attr-defined]
    client.post("/predict", json=sample_record(churn_model.schema))
    client.post("/predict/batch", json={"records": [sample_record(churn_model.schema)] * 4})
    client.post("/predict", json={"bad": 1})
    client.__exit__(None, None, None)  # shutdown drains the writer
    assert count_rows(log_path) == 5


def test_replicas_share_one_postgresql_log_that_the_drift_window_reads(
    make_client: Client, churn_model: Trained, postgres_log_url: str
) -> None:
    replicas = [make_client(churn_model.name, prediction_log_url=postgres_log_url) for _ in range(2)]
    answered = [
        replica.post("/predict", json=sample_record(churn_model.schema)).json()["request_id"]
        for replica in replicas
        for _ in range(3)
    ]
    for replica in replicas:
        replica.__exit__(None, None, None)  # shutdown drains each writer
    assert sorted(row.request_id for row in read_rows(postgres_log_url)) == sorted(answered)
    window = read_features(postgres_log_url, churn_model.name)
    assert len(window) == 6
    assert set(window.columns) == set(churn_model.schema.feature_names)


def test_an_empty_api_key_means_no_key() -> None:
    """Compose hands the key over as a file, empty unless the operator writes a key into it."""
    from api.settings import ApiSettings

    assert ApiSettings(api_key="").api_key is None
    assert ApiSettings(api_key="k").api_key is not None


def test_with_the_registry_down_and_nothing_loaded_ready_claims_no_loaded_version(
    make_client: Client,
) -> None:
    client = make_client(
        "any-model", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", registry_timeout_seconds=1
    )
    answer = client.get("/ready")
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert "the registry has been unreachable since" in detail
    assert "nothing is loaded yet" in detail
    assert "serving the loaded versions" not in detail

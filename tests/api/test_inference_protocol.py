"""The Open Inference Protocol (v2) routes: health, metadata, inference and the protocol's errors,
in process and through Triton's official client against the server under uvicorn."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.predictions.access import count_rows
from tests.api.conftest import Trained, api_server, holdout_records

pytestmark = pytest.mark.integration


def tensors(trained: Trained, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One input tensor per feature, as the protocol's REST schema spells it."""
    return [
        {
            "name": f.name,
            "shape": [len(records), 1],
            "datatype": "FP64" if f.kind == "numeric" else "BYTES",
            "data": [[r[f.name]] for r in records],
        }
        for f in trained.schema.features
    ]


def infer(client: TestClient, trained: Trained, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/v2/models/{trained.name}/infer", json=body, headers=headers)


def test_health_and_metadata_follow_the_protocol(make_client: Any, churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    live = client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{churn_model.name}/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "bitloop"
    meta = client.get(f"/v2/models/{churn_model.name}").json()
    assert meta["name"] == churn_model.name
    assert meta["versions"] == [churn_model.version]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": f.name, "datatype": "FP64" if f.kind == "numeric" else "BYTES", "shape": [-1, 1]}
        for f in churn_model.schema.features
    ]
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
    ]
    version = client.get(f"/v2/models/{churn_model.name}/versions/{churn_model.version}").json()
    assert version["versions"] == [churn_model.version]
    for path in ("/v2/models/nope", f"/v2/models/{churn_model.name}/versions/999"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert set(answer.json()) == {"error"}


def test_not_ready_without_a_champion(make_client: Any) -> None:
    client = make_client("never-trained")
    assert client.get("/v2/health/live").status_code == 200
    answer = client.get("/v2/health/ready")
    assert (answer.status_code, answer.json()) == (400, {"ready": False})
    inference = client.post("/v2/models/never-trained/infer", json={"inputs": []})
    assert inference.status_code == 503
    assert "no model has been promoted" in inference.json()["error"]


@pytest.mark.parametrize("model", ["churn_model", "diabetes_model"])
def test_inference_answers_as_predict_batch_does_and_is_logged(
    make_client: Any, tmp_path: Path, model: str, request: pytest.FixtureRequest
) -> None:
    trained: Trained = request.getfixturevalue(model)
    client = make_client(trained.name)
    records = holdout_records(trained, 50)
    batch = client.post("/predict/batch", json={"records": records}).json()
    answer = infer(client, trained, {"id": "req-1", "inputs": tensors(trained, records)})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert (out["model_name"], out["model_version"], out["id"]) == (trained.name, trained.version, "req-1")
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["predict"]["shape"] == [50]
    assert outputs["predict"]["data"] == batch["predictions"]
    if trained.schema.task == "classification":
        classes = [str(c) for c in trained.schema.classes]
        assert outputs["predict_proba"]["shape"] == [50, len(classes)]
        expected = [p[c] for p in batch["probabilities"] for c in classes]
        assert np.allclose(outputs["predict_proba"]["data"], expected, atol=1e-12)
        only = infer(client, trained, {"inputs": tensors(trained, records), "outputs": [{"name": "predict"}]})
        assert [o["name"] for o in only.json()["outputs"]] == ["predict"]
    # Flat data is the same tensor as nested data.
    flat = [{**t, "shape": [50], "data": [row[0] for row in t["data"]]} for t in tensors(trained, records)]
    assert infer(client, trained, {"inputs": flat}).json()["outputs"][0]["data"] == batch["predictions"]
    answered = 50 * (4 if trained.schema.task == "classification" else 3)  # the batch and each inference
    logged, deadline = 0, time.monotonic() + 10
    while logged < answered and time.monotonic() < deadline:
        time.sleep(0.1)
        logged = count_rows(tmp_path / "log-0.sqlite")
    assert logged == answered
    metrics = client.get("/metrics").text
    assert 'route="/v2/models/{name}/infer",status="200"' in metrics


def test_bad_input_is_a_400_naming_the_input_and_row(make_client: Any, churn_model: Trained) -> None:
    client = make_client(churn_model.name)
    records = holdout_records(churn_model, 5)
    good = tensors(churn_model, records)
    numeric = next(f.name for f in churn_model.schema.features if f.kind == "numeric" and not f.nullable)
    categorical = next(f.name for f in churn_model.schema.features if f.kind == "categorical")

    def with_tensor(name: str, **changes: Any) -> dict[str, Any]:
        return {"inputs": [{**t, **changes} if t["name"] == name else t for t in good]}

    def error(body: Any, **headers: str) -> str:
        answer = infer(client, churn_model, body, **headers)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()) == {"error"}
        message: str = answer.json()["error"]
        return message

    bad_value = [[r[numeric]] for r in records]
    bad_value[3] = ["twelve"]
    assert f"input {numeric!r}, row 3" in error(with_tensor(numeric, data=bad_value))
    unknown = [[r[categorical]] for r in records]
    unknown[2] = ["not-a-category"]
    assert f"input {categorical!r}, row 2" in error(with_tensor(categorical, data=unknown))
    assert f"input {numeric!r} has datatype 'BYTES'" in error(with_tensor(numeric, datatype="BYTES"))
    assert f"input {numeric!r} has shape [5, 2]" in error(with_tensor(numeric, shape=[5, 2]))
    assert f"input {numeric!r} holds 5 values; its shape says 4" in error(with_tensor(numeric, shape=[4, 1]))
    assert "missing inputs" in error({"inputs": good[1:]})
    assert "unknown inputs ['extra']" in error({"inputs": [*good, {**good[0], "name": "extra"}]})
    assert "unknown outputs ['logits']" in error({"inputs": good, "outputs": [{"name": "logits"}]})
    assert "Invalid JSON" in client.post(f"/v2/models/{churn_model.name}/infer", content=b"{").json()["error"]
    missing_shape = {"inputs": [{k: v for k, v in t.items() if k != "shape"} for t in good]}
    assert "inputs.0.shape" in error(missing_shape)
    plain = client.post(
        f"/v2/models/{churn_model.name}/infer", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    assert "application/json" in plain.json()["error"]


def test_an_api_key_guards_inference_with_a_protocol_error(make_client: Any, churn_model: Trained) -> None:
    client = make_client(churn_model.name, api_key="s3cret-key")
    body = {"inputs": tensors(churn_model, holdout_records(churn_model, 2))}
    refused = infer(client, churn_model, body)
    assert refused.status_code == 401
    assert refused.json() == {"error": "missing or wrong X-API-Key header"}
    assert infer(client, churn_model, body, **{"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # health stays open, as /ready does


def test_the_official_triton_client_talks_to_the_server(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    """tritonclient builds its requests from the protocol itself and reads the answers."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    records = holdout_records(churn_model, 20)
    with api_server(tmp_path, mlflow_uri, churn_model.name) as base:
        client = triton.InferenceServerClient(base.removeprefix("http://"))
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(churn_model.name)
        meta = client.get_model_metadata(churn_model.name)
        assert [i["name"] for i in meta["inputs"]] == churn_model.schema.feature_names
        inputs = []
        for f in churn_model.schema.features:
            if f.kind == "numeric":
                column = np.array(
                    [[np.nan if r[f.name] is None else r[f.name]] for r in records], dtype=np.float64
                )
                column = np.nan_to_num(column, nan=0.0)  # JSON has no NaN: a number for every row here
                tensor = triton.InferInput(f.name, [len(records), 1], "FP64")
            else:
                column = np.array([[r[f.name] or f.categories[0]] for r in records], dtype=object)
                tensor = triton.InferInput(f.name, [len(records), 1], "BYTES")
            tensor.set_data_from_numpy(column, binary_data=False)
            inputs.append(tensor)
        outputs = [
            triton.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")
        ]
        result = client.infer(churn_model.name, inputs, outputs=outputs)
        proba = result.as_numpy("predict_proba")
        assert proba.shape == (20, 2)
        assert np.allclose(proba.sum(axis=1), 1.0)
        assert (result.as_numpy("predict") == proba.argmax(axis=1)).all()
        with pytest.raises(InferenceServerException, match="missing inputs"):
            client.infer(churn_model.name, inputs[1:])

"""Entity ids on predictions and true outcomes through `POST /feedback`: addressed by request id and
row or by entity id, stored once, unknown ones reported per item, every 4xx naming the item."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from api.arrow import ARROW_STREAM
from api.outcomes import OutcomeStore, OutcomesUnavailable
from core.predictions.access import count_rows, read_rows
from core.predictions.backends import open_store
from tests.api.conftest import Trained, holdout_records, sample_record
from tests.api.traffic import wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration
Client = Callable[..., TestClient]


def logged(path: Path, rows: int) -> None:
    wait_for(lambda: path.exists() and count_rows(path) >= rows, 10)


def stored(path: Path) -> list[tuple[str, int, Any]]:
    store = open_store(path)
    try:
        return [(r, i, o) for r, i, o, _ in store.outcomes()]
    finally:
        store.close()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


@pytest.fixture
def client(make_client: Client, churn_model: Trained, log_path: Path) -> TestClient:
    return make_client(churn_model.name, prediction_log_url=str(log_path))


def test_entity_ids_are_logged_with_each_prediction(
    client: TestClient, churn_model: Trained, log_path: Path
) -> None:
    records = holdout_records(churn_model, 3)
    assert client.post("/predict?id=cust-1", json=records[0]).status_code == 200
    assert client.post("/predict/batch", json={"records": records, "ids": ["a", "b", "c"]}).status_code == 200
    columns = {name: [r[name] for r in records] for name in records[0]}
    assert client.post("/predict/batch", json={"columns": columns, "ids": ["d", "e", "f"]}).status_code == 200
    table = pa.Table.from_pylist([{**r, "customer": f"g{i}"} for i, r in enumerate(records)])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    arrow = client.post(
        "/predict/batch?id_column=customer", content=sink.getvalue(), headers={"content-type": ARROW_STREAM}
    )
    assert arrow.status_code == 200, arrow.text
    assert client.post("/predict", json=records[0]).status_code == 200  # no id
    logged(log_path, 11)
    assert [(r.row_index, r.entity_id) for r in read_rows(log_path)] == [
        (0, "cust-1"),
        *[(i, e) for i, e in enumerate("abc")],
        *[(i, e) for i, e in enumerate("def")],
        *[(i, f"g{i}") for i in range(3)],
        (0, None),
    ]


def test_the_inference_protocol_logs_the_ids_parameter(
    client: TestClient, churn_model: Trained, log_path: Path
) -> None:
    records = holdout_records(churn_model, 2)
    inputs = [
        {
            "name": f.name,
            "shape": [2],
            "datatype": "FP64" if f.kind == "numeric" else "BYTES",
            "data": [r[f.name] for r in records],
        }
        for f in churn_model.schema.features
    ]
    path = f"/v2/models/{churn_model.name}/infer"
    answer = client.post(path, json={"inputs": inputs, "parameters": {"ids": ["v1", "v2"]}})
    assert answer.status_code == 200, answer.text
    logged(log_path, 2)
    assert [(r.row_index, r.entity_id) for r in read_rows(log_path)] == [(0, "v1"), (1, "v2")]
    short = client.post(path, json={"inputs": inputs, "parameters": {"ids": ["v1"]}})
    assert short.status_code == 400
    assert short.json() == {"error": "parameter 'ids' must be a list of 2 ids, one per row"}


def test_ids_that_do_not_fit_are_422s_naming_them(client: TestClient, churn_model: Trained) -> None:
    records = holdout_records(churn_model, 2)

    def locs(answer: Any) -> list[list[Any]]:
        assert answer.status_code == 422, answer.text
        return [e["loc"] for e in answer.json()["detail"]]

    assert locs(client.post("/predict/batch", json={"records": records, "ids": ["one"]})) == [["body", "ids"]]
    assert ["query", "id"] in locs(client.post("/predict?id=" + "x" * 201, json=records[0]))
    assert locs(client.post("/predict/batch?id_column=c", json={"records": records})) == [
        ["query", "id_column"]
    ]
    table = pa.Table.from_pylist([{**r, "customer": c} for r, c in zip(records, ["ok", None], strict=True)])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    headers = {"content-type": ARROW_STREAM}
    assert locs(
        client.post("/predict/batch?id_column=customer", content=sink.getvalue(), headers=headers)
    ) == [["body", "columns", "customer", 1]]
    missing = client.post("/predict/batch?id_column=nope", content=sink.getvalue(), headers=headers)
    assert locs(missing) == [["query", "id_column"]]


def test_outcomes_are_recorded_once_and_unknown_ones_reported(
    client: TestClient, churn_model: Trained, log_path: Path
) -> None:
    records = holdout_records(churn_model, 3)
    batch = client.post("/predict/batch", json={"records": records, "ids": ["a", "b", "c"]}).json()
    single = client.post("/predict?id=d", json=records[0]).json()
    logged(log_path, 4)
    classes = [str(c) for c in churn_model.schema.classes]
    first, other = classes[0], classes[1]
    answer = client.post(
        "/feedback",
        json={
            "outcomes": [
                {"request_id": batch["request_id"], "row": 2, "outcome": first},
                {"id": "d", "outcome": other},
                {"request_id": single["request_id"], "outcome": other},  # row 0 by default: the same one
                {"request_id": batch["request_id"], "row": 7, "outcome": first},
                {"id": "nobody", "outcome": first},
            ]
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "recorded": 2,
        "invalid": 0,
        "duplicate": 1,
        "conflict": 0,
        "unknown": 2,
        "items": [
            {
                "index": 2,
                "status": "duplicate",
                "detail": "this outcome is already stored for the prediction",
            },
            {"index": 3, "status": "unknown", "detail": answer.json()["items"][1]["detail"]},
            {"index": 4, "status": "unknown", "detail": answer.json()["items"][2]["detail"]},
        ],
    }
    again = client.post(
        "/feedback", json={"outcomes": [{"id": "b", "outcome": other}, {"id": "b", "outcome": first}]}
    )
    assert again.json()["recorded"] == 1
    assert again.json()["items"] == [
        {
            "index": 1,
            "status": "conflict",
            "detail": "another outcome is already stored for the prediction: it stays",
        }
    ]
    known = {str(c): c for c in churn_model.schema.classes}
    assert sorted(stored(log_path)) == sorted(
        [
            (batch["request_id"], 2, known[first]),
            (single["request_id"], 0, known[other]),
            (batch["request_id"], 1, known[other]),
        ]
    )
    counted = f'bitloop_feedback_outcomes_total{{model="{churn_model.name}",status="duplicate"}} 1.0'
    assert counted in client.get("/metrics").text


@pytest.mark.parametrize(
    ("item", "loc"),
    [
        ({"outcome": "yes"}, ["body", "outcomes", 1]),
        ({"request_id": "r", "id": "c", "outcome": "yes"}, ["body", "outcomes", 1]),
        ({"id": "c", "row": 2, "outcome": "yes"}, ["body", "outcomes", 1]),
        ({"id": "c"}, ["body", "outcomes", 1, "outcome"]),
        ({"id": "c", "outcome": "maybe"}, ["body", "outcomes", 1, "outcome"]),
        ({"id": "c", "outcome": None}, ["body", "outcomes", 1, "outcome"]),
        ({"request_id": "r", "row": -1, "outcome": "yes"}, ["body", "outcomes", 1, "row"]),
        # Past what either store's row column holds (PostgreSQL INTEGER, SQLite 64-bit): a 422, not a 503.
        ({"request_id": "r", "row": 2**31, "outcome": "yes"}, ["body", "outcomes", 1, "row"]),
        ({"request_id": "r", "row": 2**63, "outcome": "yes"}, ["body", "outcomes", 1, "row"]),
        ({"id": "", "outcome": "yes"}, ["body", "outcomes", 1, "id"]),
    ],
)
def test_a_bad_outcome_is_listed_by_field_and_the_good_ones_recorded(
    client: TestClient, churn_model: Trained, log_path: Path, item: dict[str, Any], loc: list[Any]
) -> None:
    records = holdout_records(churn_model, 2)
    batch = client.post("/predict/batch", json={"records": records, "ids": ["g0", "g1"]}).json()
    logged(log_path, 2)
    first = str(churn_model.schema.classes[0])
    good = [{"id": "g0", "outcome": first}, {"id": "g1", "outcome": first}]
    answer = client.post("/feedback", json={"outcomes": [good[0], item, good[1]]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["recorded"], body["invalid"]) == (2, 1), body
    (listed,) = body["items"]
    assert (listed["index"], listed["status"]) == (1, "invalid")
    assert listed["loc"][: len(loc)] == loc, listed
    assert listed["detail"]
    assert sorted((r, i) for r, i, _ in stored(log_path)) == [
        (batch["request_id"], 0),
        (batch["request_id"], 1),
    ]
    assert (
        f'bitloop_feedback_outcomes_total{{model="{churn_model.name}",status="invalid"}}'
        in client.get("/metrics").text
    )

    # Alone, the same item is a 422 naming it: nothing in the request could be recorded.
    alone = client.post("/feedback", json={"outcomes": [item]})
    assert alone.status_code == 422, alone.text
    first_loc = [0 if part == 1 and at == 2 else part for at, part in enumerate(loc)]
    assert any(e["loc"][: len(first_loc)] == first_loc for e in alone.json()["detail"]), alone.json()


def test_feedback_checks_the_whole_body(client: TestClient, churn_model: Trained) -> None:
    assert client.post("/feedback", json={"outcomes": []}).status_code == 422
    assert client.post("/feedback", json={"outcomes": [{"id": "c", "outcome": "x"}] * 1001}).json()["detail"][
        0
    ]["loc"] == ["body", "outcomes"]
    assert (
        client.post("/feedback", content=b"id=c", headers={"content-type": "text/plain"}).status_code == 415
    )


def test_a_regression_outcome_is_a_finite_number(
    make_client: Client, diabetes_model: Trained, tmp_path: Path
) -> None:
    path = tmp_path / "reg.sqlite"
    client = make_client(diabetes_model.name, prediction_log_url=str(path))
    assert client.post("/predict?id=p1", json=sample_record(diabetes_model.schema)).status_code == 200
    logged(path, 1)
    for bad in ("high", True, "NaN"):
        answer = client.post("/feedback", json={"outcomes": [{"id": "p1", "outcome": bad}]})
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["body", "outcomes", 0, "outcome"]
    assert client.post("/feedback", json={"outcomes": [{"id": "p1", "outcome": 151}]}).json()["recorded"] == 1
    assert [o for _, _, o in stored(path)] == [151.0]


def test_feedback_needs_the_api_key(make_client: Client, churn_model: Trained) -> None:
    client = make_client(churn_model.name, api_key="s3cret")
    body = {"outcomes": [{"id": "c", "outcome": str(churn_model.schema.classes[0])}]}
    assert client.post("/feedback", json=body).status_code == 401
    assert client.post("/feedback", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_a_log_that_cannot_be_reached_is_a_503_without_its_password() -> None:
    store = OutcomeStore(f"postgresql://bitloop:hunter2@127.0.0.1:{free_port()}/log")
    with pytest.raises(OutcomesUnavailable) as caught:
        store.record("m", [])
    assert "hunter2" not in str(caught.value)
    assert "cannot store outcomes" in str(caught.value)
